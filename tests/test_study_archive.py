"""A study that keeps its runs in an archive (study.py with archive.py): run once with the stand-in scorer, then
resumed from the archives alone (as on another machine: no results directory, no scoring) to the same bytes, and
refused when the config has changed since the archive was made."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml
from standin import TINY_DATA, VoteScorer, tiny_tokenizer

from retrieval_icl.errors import RiclError
from retrieval_icl.study import load_study, run_study


class NoScoring(VoteScorer):
    """The stand-in, failing the test if anything is scored."""

    def score(self, *args, **kwargs):
        raise AssertionError("a study resumed from its archives scored prompts")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def write_study(tmp_path: Path, k: int = 2) -> Path:
    """A bandwidth study over the tiny SST-2 data: nearest, farthest and random (two seeds) at k, two query draws."""
    experiment = {"task": "sst2", "data_dir": str(TINY_DATA), "n_queries": 8, "k_values": [k], "seeds": [0, 1],
                  "selectors": [{"name": "knn", "label": "nearest"},
                                {"name": "band", "label": "farthest", "params": {"position": 1.0}},
                                {"name": "random"}],
                  "dtype": "float32", "capture_attention": True, "index_root": str(tmp_path / "indexes")}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    study = {"experiments": ["experiment.yaml"], "grid": {"query_seed": [0, 1]},
             "output_root": str(tmp_path / "results"), "archive": str(tmp_path / "kept" / "bandwidth"),
             "table2": False, "selection_n": 4,
             "question": {"claim": "bandwidth", "text": "Nearer helps?", "statistic": "similarity_slope",
                          "reference": "random", "margin": 0.01, "n_resamples": 1000}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_study_resumes_from_its_archives_without_scoring_to_the_same_bytes(tmp_path, tokenizer):
    path = write_study(tmp_path)
    written = run_study(path, scorer=VoteScorer(tokenizer))
    kept = tmp_path / "kept"
    assert {p.name for p in written} == {"claims.md", "claims.csv", "conditions.csv", "accuracy_by_similarity_rank.png",
                                         "findings.md", "findings.csv"}
    nearest = next(r for r in csv.DictReader((kept / "bandwidth" / "conditions.csv").open())
                   if r["condition"] == "nearest k=2")
    assert int(nearest["records"]) == 16 and 0 <= float(nearest["gold_label_share"]) <= 1  # 8 queries x 2 draws
    assert float(nearest["entropy_correct"]) >= 0  # the best head's kernel entropy, from the archives' analyses
    assert sorted(p.name for p in (kept / "bandwidth").iterdir() if p.is_dir()) == ["experiment-0", "experiment-1"]
    findings = (kept / "findings.md").read_text()
    assert "| bandwidth | smollm2-135m | sst2 | slope of accuracy per 0.1 mean cosine, within query |" in findings
    assert "bandwidth/claims.csv" in findings
    before = files(kept)
    shutil.rmtree(tmp_path / "results")  # another machine: the archives alone, from git
    run_study(path, scorer=NoScoring(tokenizer))
    assert files(kept) == before
    assert not (tmp_path / "results").exists()


def test_only_runs_the_grid_points_asked_for(tmp_path, tokenizer):
    path = write_study(tmp_path)
    run_study(path, only={"query_seed": "1"}, scorer=VoteScorer(tokenizer))
    assert sorted(p.name for p in (tmp_path / "kept" / "bandwidth").iterdir() if p.is_dir()) == ["experiment-1"]
    with pytest.raises(RiclError, match="--only model: not a grid key .* its grid keys are \\['query_seed'\\]"):
        run_study(path, only={"model": "x"}, scorer=VoteScorer(tokenizer))


def test_a_changed_config_refuses_the_archive_and_says_why(tmp_path, tokenizer):
    path = write_study(tmp_path)
    run_study(path, scorer=VoteScorer(tokenizer))
    shutil.rmtree(tmp_path / "results")
    write_study(tmp_path, k=3)
    with pytest.raises(RiclError, match="experiment-0 was archived from another config .*k_values: archived \\[2\\], "
                                        "now \\[3\\]"):
        run_study(path, scorer=NoScoring(tokenizer))


def test_a_question_needs_an_archive(tmp_path):
    path = write_study(tmp_path)
    study = yaml.safe_load(path.read_text())
    del study["archive"]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(RiclError, match="a study with a question keeps its runs: set `archive`"):
        load_study(path)
