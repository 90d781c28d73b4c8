"""frontier.py: accuracy against prompt tokens, each run tested against a reference (hand-made records, no model)."""

from __future__ import annotations

import pytest
from handmade_results import make_record, write_dir
from typer.testing import CliRunner

from retrieval_icl.analysis import applicable, load_results, write_report
from retrieval_icl.analysis.frontier import analyze_frontier, family
from retrieval_icl.cli import app
from retrieval_icl.errors import RiclError

N = 10  # queries 0..9, gold alternating


def run_records(run: str, selector: str, k: int, wrong: set[int], tokens: dict[int, int] | None = None,
                **fields) -> list[dict]:
    """One run: k demonstrations per query, wrong on the queries in `wrong`, prompt_tokens 10 k + 1 unless given."""
    recs = []
    for q in range(N):
        gold = q % 2
        pred = 1 - gold if q in wrong else gold
        rec = make_record(f"{run}-seed0", q, gold, pred, [q % 2] * k, [0.5] * k, selector=selector, **fields)
        rec["prompt_tokens"] = (tokens or {}).get(q, 10 * k + 1)
        recs.append(rec)
    return recs


def knn_k8(**fields) -> list[dict]:
    """The default reference: right on every query but 9, 81 tokens, 7 of 8 demonstrations fitted."""
    return run_records("knn-k8", "knn-k8", 8, {9}, n_demos_used=7, **fields)


def knn_k4() -> list[dict]:
    """Wrong on query 0 only; 41 tokens except 101 on query 9 (mean 47, median 41)."""
    return run_records("knn-k4", "knn-k4", 4, {0}, {9: 101})


def random_k4() -> list[dict]:
    """Right on queries 8 and 9 only; n_demos_used not recorded (the demo ids count)."""
    return [{k: v for k, v in r.items() if k != "n_demos_used"}
            for r in run_records("random-k4", "random-k4", 4, set(range(8)))]


def results_of(tmp_path, *runs: list[dict]):
    return load_results(write_dir(tmp_path / "frontier", [r for run in runs for r in run], {"task": "sst2"},
                                  with_attention=False))


def test_rows_accuracy_tokens_and_mcnemar_against_the_default_reference(tmp_path):
    results = results_of(tmp_path, knn_k8(), knn_k4(), random_k4())
    found = analyze_frontier(results)
    assert found["reference"] == "knn-k8-seed0"
    ref, k4, rnd = (found["runs"][f"{name}-seed0"] for name in ("knn-k8", "knn-k4", "random-k4"))
    assert (ref["accuracy"], ref["mean_tokens"], ref["median_tokens"], ref["mean_demos"]) == (0.9, 81.0, 81.0, 7.0)
    assert (k4["accuracy"], k4["mean_tokens"], k4["median_tokens"], k4["mean_demos"]) == (0.9, 47.0, 41.0, 4.0)
    assert (rnd["accuracy"], rnd["mean_tokens"], rnd["mean_demos"]) == (0.2, 41.0, 4.0)
    # knn-k4 vs reference: each right where the other is wrong once (queries 9 and 0): p = 1
    assert (k4["run_only_correct"], k4["reference_only_correct"], k4["p_value"]) == (1, 1, 1.0)
    assert k4["accuracy_diff"] == 0.0 and k4["token_ratio"] == pytest.approx(47 / 81) and k4["matches"]
    # random-k4: right alone on query 9, the reference alone on 0..7: two-sided binomial 2 (1 + 9) / 2^9
    assert (rnd["run_only_correct"], rnd["reference_only_correct"]) == (1, 8)
    assert rnd["p_value"] == pytest.approx(20 / 512) and rnd["accuracy_diff"] == pytest.approx(-0.7)
    assert rnd["token_ratio"] == pytest.approx(41 / 81) and not rnd["matches"]
    assert ref["reference"] and ref["p_value"] == 1.0 and ref["matches"] and not k4["reference"]
    assert ref["ci_low"] <= 0.9 <= ref["ci_high"] and ref["n"] == N and ref["k"] == 8 and ref["family"] == "knn"
    for name in ("frontier.json", "frontier.csv", "frontier.png"):
        assert (results.analysis_dir / name).exists()


def test_the_default_reference_falls_back_to_knn_with_k_8_then_to_none(tmp_path):
    plain = run_records("knn", "knn", 8, {9}) + run_records("knn4", "knn", 4, set())
    found = analyze_frontier(results_of(tmp_path / "a", plain, random_k4()))
    assert found["reference"] == "knn-seed0" and found["runs"]["knn4-seed0"]["reference_only_correct"] == 0
    found = analyze_frontier(results_of(tmp_path / "b", knn_k4(), random_k4()))
    assert found["reference"] is None and "No reference run" in found["note"]
    assert "p_value" not in found["runs"]["knn-k4-seed0"]


def test_an_explicit_reference_and_an_unknown_one(tmp_path):
    results = results_of(tmp_path, knn_k8(), knn_k4(), random_k4())
    found = analyze_frontier(results, reference="random-k4-seed0")
    assert found["reference"] == "random-k4-seed0" and found["runs"]["knn-k4-seed0"]["run_only_correct"] == 7
    with pytest.raises(RiclError, match="unknown reference run 'nope'; known runs: knn-k8-seed0, knn-k4-seed0, "
                                        "random-k4-seed0"):
        analyze_frontier(results, reference="nope")


def test_frontier_applies_with_prompt_tokens_and_two_runs(tmp_path):
    assert applicable(results_of(tmp_path / "a", knn_k8(), knn_k4()))["frontier"] is None
    one_run = applicable(results_of(tmp_path / "b", knn_k8()))["frontier"]
    assert one_run == "only 1 run; the frontier compares two or more"
    untokened = [{k: v for k, v in r.items() if k != "prompt_tokens"} for r in knn_k4()]
    assert applicable(results_of(tmp_path / "c", knn_k8(), untokened))["frontier"] == (
        "10 of 20 records have no prompt_tokens")


def test_family_is_the_label_before_its_k():
    assert [family(s) for s in ("knn-k8", "knn", "mmr-k16-lambda", "kmeans")] == ["knn", "knn", "mmr", "kmeans"]


def test_analyze_frontier_command_with_a_reference_then_the_report(tmp_path):
    results = results_of(tmp_path, knn_k8(), knn_k4(), random_k4())
    result = CliRunner().invoke(app, ["analyze", "frontier", str(results.directory), "--reference", "knn-k4-seed0"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("knn-k4-seed0: accuracy 0.900 [") and lines[1].endswith("], 47.0 tokens (reference)")
    # random-k4 vs knn-k4: the reference alone right on queries 1..7, neither alone otherwise: p = 2 / 2^7
    assert lines[2].startswith("random-k4-seed0: accuracy 0.200 [")
    assert lines[2].endswith("41.0 tokens, vs knn-k4-seed0: -0.700 (McNemar p=0.0156), tokens x0.87, differs")
    assert lines[0].endswith("81.0 tokens, vs knn-k4-seed0: +0.000 (McNemar p=1), tokens x1.72, matches")
    assert lines[3] == f"frontier: {results.analysis_dir / 'frontier.json'}"
    unknown = CliRunner().invoke(app, ["analyze", "frontier", str(results.directory), "--reference", "nope"])
    assert unknown.exit_code == 2 and "known runs: knn-k8-seed0" in unknown.stderr
    [md] = write_report(results.directory, html=False)
    text = md.read_text()
    assert "## Accuracy against prompt tokens" in text
    assert "![Accuracy / prompt-token frontier](analysis/frontier.png)" in text
    assert ("| run | k | n | accuracy (95% CI) | mean tokens | median tokens | mean demos | run / reference only right "
            "| McNemar p | accuracy diff | token ratio | matches |") in text
    assert "| knn-k4-seed0 (reference) | 4 | 10 | 0.900 [" in text
    assert "| 47.0 | 41.0 | 4.00 | 0 / 0 | 1 | +0.000 | 1.00 | yes |" in text
    assert "| 41.0 | 41.0 | 4.00 | 0 / 7 | 0.0156 | -0.700 | 0.87 | no |" in text
