"""Table 2 across results directories (hand-made records, no model) and study configs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml
from handmade_results import SELECTORS, make_record, queries, write_dir
from typer.testing import CliRunner

from retrieval_icl.analysis.crossrun import collect, write_cross_run_report
from retrieval_icl.cli import app
from retrieval_icl.errors import RiclError
from retrieval_icl.study import load_study, study_configs

ROOT = Path(__file__).resolve().parents[1]


def results_dir(tmp_path: Path, model: str, task: str = "sst2") -> Path:
    """A perfect knn run (prediction = gold, the planted head follows it) of `model` on `task`."""
    recs = [make_record("knn-seed0", q, g, g, labels, scores, task=task) for q, g, labels, scores in queries()]
    return write_dir(tmp_path / f"{task}-{model}", recs, {"task": task, "model": model, "selectors": SELECTORS[:1]})


def test_models_side_by_side_with_the_papers_rows(tmp_path):
    dirs = [results_dir(tmp_path, "smollm2-135m"), results_dir(tmp_path, "gemma3-270m")]
    md, csv_path = write_cross_run_report(dirs, tmp_path / "cross", selection_n=20)
    text = md.read_text()
    assert "| paper: GPT-J-6B (28 layers x 16 heads) | Table 2 | icl_accuracy | 0.805 |" in text
    assert "| paper: GPT-J-6B (28 layers x 16 heads) | Table 2 | encoder_kernel_accuracy | 0.503 |" in text
    assert "| smollm2-135m | knn | reconstruction_agreement | 1.000 [1.000, 1.000] |" in text
    assert ("| gemma3-270m | knn | best_head | L1H2 (20/20 splits) |" in text and
            "| gemma3-270m | knn | best_head_depth | 0.50 |" in text)
    rows = list(csv.DictReader(csv_path.open()))
    agreement = [r for r in rows if r["metric"] == "reconstruction_agreement"]
    assert [r["model"] for r in agreement] == ["smollm2-135m", "gemma3-270m"]
    assert all(r["paper_gptj"] == "0.797" and float(r["value"]) == 1.0 for r in agreement)


def test_the_same_model_task_and_selector_twice_is_an_error(tmp_path):
    first = results_dir(tmp_path, "smollm2-135m")
    copy = shutil.copytree(first, tmp_path / "copy")
    with pytest.raises(RiclError, match="both hold model smollm2-135m, task sst2, selector knn"):
        collect([first, copy], selection_n=20)


def test_report_over_several_directories_from_the_cli(tmp_path):
    dirs = [results_dir(tmp_path, "smollm2-135m"), results_dir(tmp_path, "gemma3-270m", task="trec")]
    result = CliRunner().invoke(app, ["report", *map(str, dirs), "--out", str(tmp_path / "x"), "--selection-n", "20"])
    assert result.exit_code == 0, result.output
    header = next(line for line in (tmp_path / "x" / "table2.md").read_text().splitlines()
                  if line.startswith("| model"))
    assert header == "| model | selector | metric | sst2 | trec |"


def test_study_crosses_experiments_with_the_grid():
    configs = study_configs(ROOT / "configs" / "studies" / "table2.yaml")
    assert len(configs) == 8 and {c.task for c in configs} == {"sst2", "agnews", "trec", "mnli"}
    assert {c.model for c in configs} == {"smollm2-135m", "gemma3-270m"}
    assert configs[1].output_dir == "results/table2/table2-sst2-gemma3-270m"


def test_a_study_naming_a_missing_experiment_or_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"experiments": ["nope.yaml"], "output_root": "out"}))
    with pytest.raises(RiclError, match="experiments: nope.yaml not found"):
        load_study(path)
    path.write_text(yaml.safe_dump({"experiments": ["nope.yaml"], "output_root": "out", "grids": {}}))
    with pytest.raises(RiclError, match="grids: Extra inputs are not permitted"):
        load_study(path)
    path.write_text(yaml.safe_dump({"experiments": ["nope.yaml"], "output_root": "out", "tau": 0.05}))
    with pytest.raises(RiclError, match="tau was renamed bandwidth .*; write bandwidth: 0.05"):
        load_study(path)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_study_config_validates(path):
    configs = study_configs(path)
    assert configs and len({c.output_dir for c in configs}) == len(configs)
