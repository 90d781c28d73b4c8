"""frontier.py: accuracy against prompt tokens, each run tested against a reference (hand-made records, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from handmade_results import make_record, write_dir
from pydantic import ValidationError
from scipy.stats import t as student_t
from typer.testing import CliRunner

from retrieval_icl.analysis import applicable, write_report
from retrieval_icl.analysis.frontier import analyze_frontier, family
from retrieval_icl.analysis.guarantee import verdict
from retrieval_icl.cli import app
from retrieval_icl.errors import RiclError
from retrieval_icl.experiment.compare_config import CompareConfig
from retrieval_icl.results_dir import load_results

N = 10  # queries 0..9, gold alternating


def run_records(run: str, selector: str, k: int, wrong: set[int] | range, tokens: dict[int, int] | None = None,
                n: int = N, **fields) -> list[dict]:
    """One run of n queries: k demonstrations each, wrong on the queries in `wrong`, prompt_tokens 10 k + 1 unless
    given."""
    recs = []
    for q in range(n):
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


def results_of(tmp_path, *runs: list[dict], config: dict | None = None):
    return load_results(write_dir(tmp_path / "frontier", [r for run in runs for r in run],
                                  {"task": "sst2"} | (config or {}), with_attention=False))


def test_rows_accuracy_tokens_and_tests_against_the_default_reference(tmp_path):
    results = results_of(tmp_path, knn_k8(), knn_k4(), random_k4())
    found = analyze_frontier(results)
    assert found["reference"] == "knn-k8-seed0" and (found["margin"], found["margin_declared"]) == (0.03, False)
    ref, k4, rnd = (found["runs"][f"{name}-seed0"] for name in ("knn-k8", "knn-k4", "random-k4"))
    assert (ref["accuracy"], ref["mean_tokens"], ref["median_tokens"], ref["mean_demos"]) == (0.9, 81.0, 81.0, 7.0)
    assert (k4["accuracy"], k4["mean_tokens"], k4["median_tokens"], k4["mean_demos"]) == (0.9, 47.0, 41.0, 4.0)
    assert (rnd["accuracy"], rnd["mean_tokens"], rnd["mean_demos"]) == (0.2, 41.0, 4.0)
    # knn-k4 - reference per query: -1 on query 0, +1 on query 9, else 0: mean 0, sd sqrt(2/9), se sqrt(2/9)/sqrt(10)
    se_k4 = np.sqrt(2 / 9) / np.sqrt(10)
    assert (k4["run_only_correct"], k4["reference_only_correct"], k4["accuracy_diff"]) == (1, 1, 0.0)
    assert k4["ni_p"] == pytest.approx(student_t.sf(0.03 / se_k4, 9)) == k4["tost_p"]  # both bounds 0.03 away
    assert k4["resolvable_margin"] == pytest.approx(student_t.ppf(0.95, 9) * se_k4)
    assert k4["diff_ci_low"] < 0 < k4["diff_ci_high"] and k4["token_ratio"] == pytest.approx(47 / 81)
    # random-k4: -1 on queries 0..7, 0 on 8, +1 on 9: mean -0.7, sum of squared deviations 8 (0.3^2) + 0.7^2 + 1.7^2
    se_rnd = np.sqrt((8 * 0.09 + 0.49 + 2.89) / 9) / np.sqrt(10)
    assert (rnd["run_only_correct"], rnd["reference_only_correct"]) == (1, 8)
    assert rnd["accuracy_diff"] == pytest.approx(-0.7) and rnd["diff_ci_high"] < 0
    assert rnd["ni_p"] == pytest.approx(student_t.sf((-0.7 + 0.03) / se_rnd, 9))
    assert rnd["tost_p"] == rnd["ni_p"]  # far below the upper bound: the lower one binds
    # Holm over the two tested runs: k4's p x 2 first, then random's x 1 (the larger, so the running max is its own)
    assert k4["ni_p_holm"] == pytest.approx(2 * k4["ni_p"]) and rnd["ni_p_holm"] == pytest.approx(rnd["ni_p"])
    assert not (k4["non_inferior"] or k4["equivalent"] or rnd["non_inferior"] or rnd["equivalent"])
    assert ref["reference"] and "ni_p" not in ref and "matches" not in k4 and not k4["reference"]
    assert ref["ci_low"] <= 0.9 <= ref["ci_high"] and ref["n"] == N and ref["k"] == 8 and ref["family"] == "knn"
    assert "the default: this config.yaml declares no margin" in found["note"]
    assert (f"With n = 10 paired queries the study can resolve margins of {k4['resolvable_margin']:.3f} "
            f"(knn-k4-seed0) to {rnd['resolvable_margin']:.3f} (random-k4-seed0)") in found["note"]
    assert "the declared margin, 0.03, is below every run's" in found["note"]
    for name in ("frontier.json", "frontier.csv", "frontier.png"):
        assert (results.analysis_dir / name).exists()


M = 400  # queries of the large study: the reference is wrong on 0..59 (accuracy 0.85)


def large_study(tmp_path, config: dict | None = None) -> dict:
    """The reference; a run swapping 4 queries each way; one wrong on 40 more (-0.10); an identical one."""
    runs = [run_records(name, name, 8, wrong, n=M) for name, wrong in
            (("knn-k8", range(60)), ("swapped", range(4, 64)), ("deficit", range(100)), ("same", range(60)))]
    return analyze_frontier(results_of(tmp_path, *runs, config=config))


def test_a_ten_point_deficit_is_not_non_inferior_and_a_close_run_is_equivalent_with_n_400(tmp_path):
    found = large_study(tmp_path)
    swapped, deficit, same = (found["runs"][f"{name}-seed0"] for name in ("swapped", "deficit", "same"))
    se = np.sqrt(8 / 399) / np.sqrt(M)  # swapped: +1 on 0..3, -1 on 60..63, mean 0
    assert swapped["ni_p"] == pytest.approx(student_t.sf(0.03 / se, M - 1)) == swapped["tost_p"]
    assert swapped["tost_p_holm"] == pytest.approx(2 * swapped["tost_p"])  # same's p = 0 ranks first, x 3
    assert swapped["non_inferior"] and swapped["equivalent"] and swapped["tost_p_holm"] < 1e-4
    assert same["tost_p"] == 0.0 and same["equivalent"] and same["resolvable_margin"] == 0.0
    assert deficit["accuracy_diff"] == pytest.approx(-0.1) and deficit["diff_ci_high"] < -0.03
    assert deficit["ni_p_holm"] > 0.99 and not deficit["non_inferior"] and not deficit["equivalent"]
    assert "the declared margin, 0.03, is above every run's resolvable margin" in found["note"]


def test_the_margin_is_read_from_the_saved_config(tmp_path):
    found = large_study(tmp_path / "a", {"margin": 0.01})
    swapped = found["runs"]["swapped-seed0"]
    assert (found["margin"], found["margin_declared"]) == (0.01, True) and "(declared in config.yaml)" in found["note"]
    se = np.sqrt(8 / 399) / np.sqrt(M)  # t = 0.01 / se = 1.41: no longer shown equivalent
    assert swapped["ni_p"] == pytest.approx(student_t.sf(0.01 / se, M - 1))
    assert not swapped["non_inferior"] and not swapped["equivalent"]
    assert swapped["resolvable_margin"] == pytest.approx(student_t.ppf(0.95, M - 1) * se)
    assert swapped["resolvable_margin"] > 0.01
    assert "the declared margin, 0.01, is above the resolvable margin of 1 of 3 runs" in found["note"]
    with pytest.raises(RiclError, match=r"margin in .*config.yaml must be a number in \(0, 1\), got 2"):
        large_study(tmp_path / "b", {"margin": 2})


def test_the_margin_is_declared_in_the_experiment_config_and_saved_with_it():
    config = CompareConfig(task="sst2")
    assert config.margin == 0.03 and config.model_dump()["margin"] == 0.03
    assert CompareConfig(task="sst2", margin=0.05).margin == 0.05
    for bad in (0, 1, -0.1):
        with pytest.raises(ValidationError, match="margin"):
            CompareConfig(task="sst2", margin=bad)


def test_the_default_reference_falls_back_to_knn_with_k_8_then_to_none(tmp_path):
    plain = run_records("knn", "knn", 8, {9}) + run_records("knn4", "knn", 4, set())
    found = analyze_frontier(results_of(tmp_path / "a", plain, random_k4()))
    assert found["reference"] == "knn-seed0" and found["runs"]["knn4-seed0"]["reference_only_correct"] == 0
    found = analyze_frontier(results_of(tmp_path / "b", knn_k4(), random_k4()))
    assert found["reference"] is None and "No reference run" in found["note"]
    assert "ni_p" not in found["runs"]["knn-k4-seed0"]


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
    # random-k4 - knn-k4: -1 on queries 1..7, 0 elsewhere: mean -0.7, se sqrt((7 x 0.09 + 3 x 0.49) / 9) / sqrt(10);
    # Holm over 2: knn-k8's p (0.42, mean 0) x 2 = 0.845 first, then random's own 0.999
    se = np.sqrt((7 * 0.09 + 3 * 0.49) / 9) / np.sqrt(10)
    p_rnd = student_t.sf((-0.7 + 0.03) / se, 9)
    assert f"{p_rnd:.3g}" == "0.999"
    assert lines[2].startswith("random-k4-seed0: accuracy 0.200 [")
    assert lines[2].endswith(f"41.0 tokens, vs knn-k4-seed0: -0.700 [-1.000, -0.400], margin 0.03: NI p={p_rnd:.3g}, "
                             f"TOST p={p_rnd:.3g} (Holm), tokens x0.87, not shown non-inferior")
    assert lines[0].endswith("81.0 tokens, vs knn-k4-seed0: +0.000 [-0.300, +0.300], margin 0.03: NI p=0.845, "
                             "TOST p=0.845 (Holm), tokens x1.72, not shown non-inferior")
    assert lines[3] == f"frontier: {results.analysis_dir / 'frontier.json'}"
    unknown = CliRunner().invoke(app, ["analyze", "frontier", str(results.directory), "--reference", "nope"])
    assert unknown.exit_code == 2 and "known runs: knn-k8-seed0" in unknown.stderr
    [md] = write_report(results.directory, html=False)
    text = md.read_text()
    assert "## Accuracy against prompt tokens" in text
    assert "![Accuracy / prompt-token frontier](analysis/frontier.png)" in text
    assert ("| run | k | n | accuracy (95% CI) | mean tokens | median tokens | mean demos | run / reference only right "
            "| diff (95% CI) | token ratio | NI p (Holm) | TOST p (Holm) | resolvable margin | non-inferior "
            "| equivalent |") in text
    assert "| knn-k4-seed0 (reference) | 4 | 10 | 0.900 [" in text
    assert "| 47.0 | 41.0 | 4.00 | – | – | – | – | – | – | – | – |" in text  # no tests of the reference
    assert "| 81.0 | 81.0 | 7.00 | 1 / 1 | +0.000 [-0.300, +0.300] | 1.72 | 0.845 | 0.845 | 0.273 | no | no |" in text
    assert (f"| 41.0 | 41.0 | 4.00 | 0 / 7 | -0.700 [-1.000, -0.400] | 0.87 | 0.999 | 0.999 "
            f"| {student_t.ppf(0.95, 9) * se:.3f} | no | no |") in text
    assert "Each other run against it on the queries both ran, paired by query id" in text


def adaptive_fit(drop: float, n: int, calibration: str | None = None) -> dict:
    """An adaptive fit as run_info.json holds it: tolerance 0.03, alpha 0.1, its calibration drop at k = 8."""
    settings = {"tolerance": 0.03, "alpha": 0.1} | ({"calibration": calibration} if calibration else {})
    return {"settings": settings, "tolerance": 0.03, "alpha": 0.1, "n_fit_queries": n,
            "fit_accuracy": {"8": {"calibration_drop": drop, "mean_count": 3.0}}}


def test_adaptive_runs_realised_drop_is_set_against_its_declared_tolerance(tmp_path):
    runs = [run_records(name, name, 8, wrong, n=M) for name, wrong in
            (("knn-k8", range(60)), ("pool", range(100)), ("crossfit", range(4, 64)), ("plain", range(60)))]
    directory = write_dir(tmp_path / "frontier", [r for run in runs for r in run], {"task": "sst2"},
                          with_attention=False)
    folds = {"calibration_folds": 2, "folds": [adaptive_fit(-0.01, 200, "200 queries"),
                                               adaptive_fit(0.005, 200, "200 queries")]}
    (directory / "run_info.json").write_text(json.dumps({"selector_fits": {
        "pool-seed0": adaptive_fit(0.0, 500), "crossfit-seed0": folds}}))
    found = analyze_frontier(load_results(directory))
    by_run = {r["run"]: r for r in found["guarantee"]}
    assert sorted(by_run) == ["crossfit-seed0", "pool-seed0"]  # "plain" declares no tolerance
    pool, cross = by_run["pool-seed0"], by_run["crossfit-seed0"]
    assert pool["realised_drop"] == pytest.approx(0.1) and pool["drop_ci_low"] > 0.03
    assert pool["verdict"] == "breach shown" and pool["calibration"] == "500 queries drawn from the pool"
    assert pool["calibration_drop"] == "+0.000" and pool["against"] == "knn at the run's k"
    assert cross["realised_drop"] == pytest.approx(0.0) and cross["drop_ci_high"] < 0.03
    assert cross["verdict"] == "within, shown" and cross["calibration_drop"] == "-0.010/+0.005"
    assert cross["calibration"] == "cross-fitted on the run's own queries, 2 folds (200/200 queries each)"
    table = (directory / "analysis" / "guarantee.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("run,k,tolerance,alpha,calibration")


def test_the_guarantee_verdict_reads_the_drops_ci():
    assert verdict(0.02, -0.01, 0.05, 0.03) == "not resolved (point within)"
    assert verdict(0.04, 0.01, 0.07, 0.03) == "not resolved (point over)"
    assert verdict(0.05, 0.031, 0.07, 0.03) == "breach shown" and verdict(0.0, -0.02, 0.029, 0.03) == "within, shown"
