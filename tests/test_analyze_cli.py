"""`ricl analyze ...` and `ricl report`: the commands' printed lines and errors on hand-made results, and on a
`compare` run over the tiny data scored by the stand-in (tests/standin.py); no model weights. The analyses on a run
of the packaged SmolLM2 are checked in test_experiment.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from handmade_results import study_dir
from standin import TINY_DATA, VoteScorer, tiny_tokenizer
from typer.testing import CliRunner

from retrieval_icl.analysis.registry import ANALYSES
from retrieval_icl.cli import app
from retrieval_icl.experiment.compare import run_compare
from retrieval_icl.experiment.compare_config import CompareConfig

runner = CliRunner()


def ricl(*args):
    return runner.invoke(app, [str(a) for a in args])


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_each_analysis_command_prints_the_file_it_wrote(tmp_path):
    study = study_dir(tmp_path / "small", n_queries=20, selectors=("knn", "random", "kmeans"))
    for analysis in ANALYSES:
        one_run = ["--run", "knn-default-in_distribution-seed0"] if "runs" in analysis.takes else []  # faster
        seed = ["--seed", "1"] if "seed" in analysis.takes else []
        result = ricl("analyze", analysis.command, study, *one_run, *seed)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[-1] == f"{analysis.name}: {study / 'analysis' / analysis.name}.json"


def test_reconstruct_prints_the_best_head_of_each_run(perfect):
    result = ricl("analyze", "reconstruct", perfect, "--run", "knn-seed0", "--selection-fraction", "0.7")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "knn-seed0: best head L1H2, held-out agreement 1.000, accuracy 1.000 (n=12)",
        f"reconstruction: {perfect / 'analysis' / 'reconstruction.json'}"]


def test_analyze_all_lists_every_analysis_done_or_skipped_then_report(perfect):
    result = ricl("analyze", "all", perfect, "--bins", "3", "--bandwidth", "0.05")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "attention: done", "reconstruction: done", "kernel: done", "surrogate: done", "bandwidth: done",
        "label_format: skipped (every run uses a single label format)",
        "distribution: skipped (one demonstration pool and no representative (kmeans/votek) selector)",
        "frontier: skipped (only 1 run; the frontier compares two or more)", f"files in {perfect / 'analysis'}"]
    report = ricl("report", perfect, "--no-html", "--no-analyze")
    assert report.exit_code == 0 and report.output.splitlines() == [f"wrote {perfect / 'report.md'}"]


def test_report_runs_the_analyses_first_unless_told_not_to(perfect):
    (perfect / "attention" / "knn-seed0.safetensors").unlink()  # fewer analyses to run
    refused = ricl("report", perfect, "--no-analyze")
    assert refused.exit_code == 2 and "no analyses saved" in refused.stderr
    result = ricl("report", perfect)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"wrote {perfect / 'report.md'}", f"wrote {perfect / 'report.html'}"]
    assert (perfect / "analysis" / "index.json").exists()


@pytest.mark.parametrize("args, message", [
    (["analyze", "attention", "no/such/dir"], "no such results directory"),
    (["analyze", "distribution", "{run}"], "nothing to compare"),
    (["analyze", "reconstruct", "{run}", "--run", "nope"], "no run named 'nope'"),
    (["analyze", "reconstruct", "{run}", "--selection-n", "40"], "selection split needs"),
])
def test_bad_input_is_one_line_and_exit_2(perfect, args, message):
    result = ricl(*[a.replace("{run}", str(perfect)) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """8 tiny-data queries x 3 selectors x 2 label formats (k=4), scored by the stand-in (2 layers x 3 heads)."""
    tmp = tmp_path_factory.mktemp("analyze")
    config = CompareConfig(task="sst2", data_dir=str(TINY_DATA), n_queries=8, k=4, label_formats=["default", "symbols"],
                           selectors=[{"name": "random"}, {"name": "knn"},
                                      {"name": "band", "params": {"position": 1.0}, "label": "far"}],
                           index_root=str(tmp / "index"), output_dir=str(tmp / "out"))
    return run_compare(config, scorer=VoteScorer(tiny_tokenizer()))[2]


def test_analyze_all_then_report(run_dir):
    result = ricl("analyze", "all", run_dir, "--selection-n", "4")
    assert result.exit_code == 0, result.output
    assert "label_format: done" in result.output and "distribution: skipped" in result.output
    out = run_dir / "analysis"
    recon = rows(out / "reconstruction.csv")
    assert [r["run"] for r in recon] == ["random-default-seed0", "knn-default-seed0", "far-default-seed0"]
    assert all(0 <= int(r["best_layer"]) < 2 and 0 <= int(r["best_head"]) < 3 and r["n_heldout"] == "4" for r in recon)
    assert all(0 <= float(r["agreement"]) <= 1 for r in recon)
    assert len(rows(out / "reconstruction_knn-default-seed0_heads.csv")) == 2 * 3
    # the stand-in weighs a label token twice an input token
    assert all(abs(float(r["label/input attention per token"]) - 2) < 1e-3 for r in rows(out / "attention.csv"))
    formats = rows(out / "label_format.csv")
    assert {r["label_format"] for r in formats} == {"default", "symbols"}
    assert all(float(r["same_demos"]) == 1.0 for r in formats)
    conditions = {r["selector"]: r for r in rows(out / "bandwidth_conditions.csv")}
    assert conditions["far"]["description"] == "band(position=1.0)"
    assert float(conditions["knn"]["mean_similarity"]) > float(conditions["far"]["mean_similarity"])

    report = ricl("report", run_dir)
    assert report.exit_code == 0, report.output
    text = (run_dir / "report.md").read_text()
    for needle in ("Table 2", "Section 5", "Figure 2", "Label format", "Not run on these records"):
        assert needle in text
    figures = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(figures) >= 8 and all((run_dir / f).exists() for f in figures)
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()
