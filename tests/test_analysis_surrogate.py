"""surrogate.py (analysis) and KernelSurrogate.fit: the kernel surrogate against the LM on hand-made records."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
from handmade_results import doctest_failures, make_record, write_dir
from typer.testing import CliRunner

from retrieval_icl.analysis import applicable
from retrieval_icl.analysis.attention import selection_split
from retrieval_icl.analysis.surrogate import (
    analyze_surrogate,
    brier,
    ece_interval,
    expected_calibration_error,
    fit_surrogate,
    nll,
    reliability,
)
from retrieval_icl.cli import app
from retrieval_icl.errors import RiclError
from retrieval_icl.results_dir import load_results
from retrieval_icl.retrieval import kernel_surrogate as surrogate_module
from retrieval_icl.retrieval.kernel_surrogate import KernelSurrogate

# One query's demonstrations: cosines 0.9, 0.8, 0.7 labelled 1, 0, 1. With bandwidth 0.1 the kernel weighs them
# exp(-1), exp(-2), exp(-3): label 1 gets exp(-1) + exp(-3), label 0 exp(-2).
SIMS, LABELS = [0.9, 0.8, 0.7], [1, 0, 1]
P1 = (math.exp(-1) + math.exp(-3)) / (math.exp(-1) + math.exp(-2) + math.exp(-3))  # 0.75527...
# with prior 1 (the analysis's uncalibrated surrogate) each label also gets 1/2
P1_PRIOR = (math.exp(-1) + math.exp(-3) + 0.5) / (math.exp(-1) + math.exp(-2) + math.exp(-3) + 1)  # 0.59668...


def test_uncalibrated_prediction_is_the_kernel_regression_worked_out_by_hand():
    assert P1 == pytest.approx(0.755272, abs=1e-6)
    assert KernelSurrogate(2, bandwidth=0.1).predict(SIMS, LABELS) == pytest.approx([1 - P1, P1], abs=1e-12)
    assert KernelSurrogate(2, bandwidth=0.1).predict([], []).tolist() == [0.5, 0.5]  # no demonstrations


def test_a_narrow_bandwidth_takes_the_nearest_label_even_for_distant_demonstrations():
    # exp((0.2 - 1) / 1e-3) underflows to 0 in float64: summed in log space, the nearest demonstration still wins
    p = KernelSurrogate(2, bandwidth=1e-3).predict([0.2, 0.1], [1, 0])
    assert p[1] == pytest.approx(1.0) and p[0] == pytest.approx(math.exp(-100.0))


def test_bandwidth_zero_is_the_nearest_neighbour_ties_sharing_a_weight_of_one():
    s = KernelSurrogate(3, bandwidth=0)
    assert s.weights([0.5, 0.5, 0.1]).tolist() == [0.5, 0.5, 0.0]
    assert s.label_mass([0.5, 0.5, 0.1], [0, 1, 1]).tolist() == [0.5, 0.5, 0.0]
    assert s.predict([0.5, 0.5, 0.1], [0, 1, 1]) == pytest.approx([0.5, 0.5, 0.0], abs=1e-15)
    assert s.predict([0.2, 0.9], [2, 0]) == pytest.approx([1.0, 0.0, 0.0], abs=1e-15)  # the nearest, not the first
    assert s.predict([], []) == pytest.approx([1 / 3] * 3, abs=1e-15)
    # the prior and the bias still apply: weight 1 on label 0 beside 1/3 on each label, then tilted
    with_prior = KernelSurrogate(3, bandwidth=0, prior=1.0, log_bias=[0.0, 0.0, math.log(2)])
    assert with_prior.predict([0.7, 0.1], [0, 1]) == pytest.approx(np.array([4, 1, 2]) / 7, abs=1e-12)
    with pytest.raises(RiclError, match=r"bandwidth must be a number >= 0 \(0 = nearest neighbour\), got -0.1"):
        KernelSurrogate(2, bandwidth=-0.1)


@pytest.mark.parametrize("bandwidth", [0.0, 0.2])
@pytest.mark.parametrize("prior", [0.0, 1.0])
def test_prefix_estimates_equal_predict_over_each_prefix(bandwidth, prior):
    rng = np.random.default_rng(5)
    sims = np.round(rng.uniform(0, 1, size=(40, 6)), 1)  # one decimal: ties in the nearest cosine are common
    labels = rng.integers(0, 3, size=(40, 6))
    s = KernelSurrogate(3, bandwidth, prior, log_bias=[0.3, -0.1, -0.2])
    prefixes = s.predict_prefixes(sims, labels)  # (40, 6, 3)
    for m in range(1, 7):
        assert np.allclose(prefixes[:, m - 1], s.predict_many(sims[:, :m], labels[:, :m]), rtol=0, atol=1e-12), m


def test_ece_and_reliability_on_equal_mass_bins_worked_out_by_hand():
    confidence = [0.55, 0.58, 0.92, 0.97, 0.75]
    hits = [True, False, True, True, False]
    # two bins of the sorted confidences, sizes 3 and 2: {0.55, 0.58, 0.75} rate 1/3, {0.92, 0.97} rate 1
    two = (3 * abs(1 / 3 - (0.55 + 0.58 + 0.75) / 3) + 2 * abs(1 - 0.945)) / 5
    assert expected_calibration_error(confidence, hits, n_bins=2) == pytest.approx(two)
    assert [(r["n"], r["low"], r["high"]) for r in reliability(confidence, hits, n_bins=2)] == [(3, 0.55, 0.75),
                                                                                             (2, 0.92, 0.97)]
    # ten bins over five queries: one query per bin, the mean of |hit - confidence|
    assert expected_calibration_error(confidence, hits) == pytest.approx((0.45 + 0.58 + 0.08 + 0.03 + 0.75) / 5)
    assert math.isnan(expected_calibration_error([], []))


def test_ece_interval_separates_a_calibrated_from_an_overconfident_predictor():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, size=2000)
    calibrated = ece_interval(confidence, rng.uniform(size=2000) < confidence, seed=1, n_resamples=200)
    overconfident = ece_interval(confidence, rng.uniform(size=2000) < 0.5, seed=1, n_resamples=200)
    assert calibrated["ci_low"] == 0 and calibrated["ci_high"] < 0.05  # the truth, 0, is inside
    assert overconfident["ci_low"] > 0.2  # confidence 0.75 on average, right half the time
    assert overconfident["ci_low"] <= overconfident["value"] <= overconfident["ci_high"]


def test_nll_and_brier_against_the_lm_distribution_by_hand():
    probs, target = np.array([[0.8, 0.2], [0.5, 0.5]]), np.array([[1.0, 0.0], [0.25, 0.75]])
    assert nll(probs, target) == pytest.approx((-math.log(0.8) - math.log(0.5)) / 2)
    assert brier(probs, target) == pytest.approx((0.04 + 0.04 + 0.0625 + 0.0625) / 2)
    assert nll(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])) == math.inf  # a label the LM gives mass, q none


def same_demos_dir(tmp_path, lm_predictions: list[int]):
    """A run whose queries all show SIMS/LABELS, the LM predicting lm_predictions; query 99 has no demonstrations."""
    recs = [make_record("knn-seed0", q, 1, p, LABELS, SIMS) for q, p in enumerate(lm_predictions)]
    recs.append(make_record("knn-seed0", 99, 0, 0, [], []))
    return write_dir(tmp_path / "same", recs, {"task": "sst2"}, with_attention=False)


def read_rows(path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_held_out_agreement_and_ece_on_a_hand_made_run(tmp_path):
    lm = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1]
    results = load_results(same_demos_dir(tmp_path, lm))
    found = analyze_surrogate(results, bandwidth=0.1, selection_fraction=0.7, seed=4)["runs"]["knn-seed0"]
    fit_part = selection_split([*range(len(lm)), 99], 0.7, None, 4)
    assert not fit_part[-1]  # seed 4 holds out query 99, the one without demonstrations
    held = [p for p, f in zip(lm, fit_part) if not f]  # the LM's predictions on the others held out
    rows = {int(r["query_id"]): r for r in read_rows(results.analysis_dir / "surrogate_queries.csv")}
    assert len(rows) == found["n_heldout"] == len(held) + 1 <= 10
    assert json.loads(rows[99]["uncalibrated_p"]) == [0.5, 0.5]
    assert all(float(r["uncalibrated_confidence"]) == pytest.approx(P1_PRIOR, abs=1e-6)
               for q, r in rows.items() if q != 99)
    # the surrogate says 1 wherever there are demonstrations; on query 99 it draws a label (tie broken at random)
    hit_99 = int(rows[99]["uncalibrated_prediction"]) == 0  # the LM predicts 0 there
    unc = found["uncalibrated"]
    assert unc["agreement"]["value"] == pytest.approx((held.count(1) + hit_99) / (len(held) + 1))
    # at most ten held-out queries: one per equal-mass bin, so ECE is the mean |hit - confidence|
    ece = (sum(abs((p == 1) - P1_PRIOR) for p in held) + 0.5) / (len(held) + 1)
    assert unc["ece"]["value"] == pytest.approx(ece) and unc["ties"] == 1
    assert unc["accuracy"]["value"] == pytest.approx((len(held) + hit_99) / (len(held) + 1))  # gold 1, and 0 on 99
    assert found["calibrated"]["parameters"]["bandwidth"] > 0 and (results.analysis_dir / "surrogate.png").exists()
    assert found["uniform"]["nll"] == pytest.approx(math.log(2))  # the references are there, scored the same way


def planted_records(surrogate: KernelSurrogate, n: int = 300, seed: int = 0) -> list[dict]:
    """Records whose label_log_probs are the planted surrogate's; every label among each query's demonstrations,
    and a few queries with none (they inform the bias only)."""
    rng = np.random.default_rng(seed)
    recs = []
    for q in range(n):
        k = 0 if q % 25 == 0 else int(rng.integers(3, 9))
        labels = [*rng.permutation(3)[:min(k, 3)], *rng.integers(0, 3, size=max(k - 3, 0))]
        sims = rng.uniform(0.2, 0.95, size=k).tolist()
        log_p = np.log(surrogate.predict(sims, labels))
        recs.append(make_record("knn-seed0", q, int(rng.integers(0, 3)), int(log_p.argmax()), [int(y) for y in labels],
                                sims, label_log_probs=log_p.tolist()))
    return recs


def test_fit_recovers_a_planted_bandwidth_and_label_bias(tmp_path):
    planted = KernelSurrogate(3, bandwidth=0.15, log_bias=[0.5, -0.3, -0.2])
    directory = write_dir(tmp_path / "planted", planted_records(planted), {"task": "sst2"}, with_attention=False)
    fitted = fit_surrogate(str(directory))
    assert fitted.bandwidth == pytest.approx(0.15, rel=0.01)
    assert fitted.log_bias == pytest.approx([0.5, -0.3, -0.2], abs=0.01)
    assert fitted.prior == 0 and fitted.n_fit_ == 300 and fitted.loss_ > 0
    found = analyze_surrogate(load_results(directory))["runs"]["knn-seed0"]
    calibrated = found["calibrated"]
    assert calibrated["agreement"]["value"] == 1.0  # the calibrated surrogate (prior fitted) is the planted model
    assert calibrated["parameters"]["bandwidth"] == pytest.approx(0.15, rel=0.02)
    assert calibrated["parameters"]["prior"] < 1e-3  # the planted surrogate has none
    # on the held-out queries its Brier score is ~0 and its NLL the LM's own entropy, which no predictor beats
    held = [r for r in planted_records(planted) if r["query_id"] in
            {int(row["query_id"]) for row in read_rows(directory / "analysis" / "surrogate_queries.csv")}]
    p = np.exp([r["label_log_probs"] for r in held])
    assert calibrated["brier"] < 1e-4 and calibrated["nll"] == pytest.approx(-(p * np.log(p)).sum(1).mean(), abs=1e-3)
    assert calibrated["nll"] < found["constant"]["nll"] < found["uniform"]["nll"]
    assert found["uncalibrated"]["brier"] > calibrated["brier"]


def test_fit_with_a_prior_and_labels_missing_from_the_demonstrations():
    planted = KernelSurrogate(2, bandwidth=0.3, prior=0.5, log_bias=[0.2, -0.2])
    rng = np.random.default_rng(1)
    sims = [rng.uniform(0, 1, size=4).tolist() for _ in range(200)]
    labels = [rng.integers(0, 2, size=4).tolist() for _ in range(200)]
    fitted = KernelSurrogate.fit(sims, labels, planted.predict_many(sims, labels), 2, prior=0.5)
    assert fitted.bandwidth == pytest.approx(0.3, rel=0.01) and fitted.log_bias == pytest.approx([0.2, -0.2], abs=0.01)
    free = KernelSurrogate.fit(sims, labels, planted.predict_many(sims, labels), 2, prior="fit")
    assert free.prior == pytest.approx(0.5, rel=0.01) and free.bandwidth == pytest.approx(0.3, rel=0.01)
    # without a prior a label absent from the demonstrations gets 0 whatever the parameters: an LM that still gives
    # it 10% is a constant term, left out; the rest is matched exactly
    no_prior = KernelSurrogate(2, bandwidth=0.3, log_bias=[0.2, -0.2])
    target = no_prior.predict_many(sims, labels)
    one_label = np.array([len(set(y)) == 1 for y in labels])
    assert one_label.any()
    target[one_label] = np.where(target[one_label] > 0.5, 0.9, 0.1)
    fitted = KernelSurrogate.fit(sims, labels, target, 2)
    assert np.isfinite(fitted.loss_) and fitted.bandwidth == pytest.approx(0.3, rel=0.01)


@pytest.mark.parametrize("args, message", [
    (([[0.5]], [[0]], [[0.5, 0.5, 0.0]], 2), "target_probs must have shape"),
    (([[0.5]], [[0]], [[-0.5, 1.5]], 2), "finite, >= 0"),
    (([], [], [], 2), "at least one query"),
    (([[0.5]], [[2]], [[0.5, 0.5]], 2), "labels must be in 0..1"),
    (([[0.5]], [[0], [1]], [[0.5, 0.5]], 2), "expected one list each"),
    (([[0.5]], [[0]], [[1.0]], 1), "n_labels must be an integer >= 2"),
    (([[0.5]], [[0]], [[0.5, 0.5]], 2, "fitted"), "prior must be a number >= 0"),
])
def test_fit_refuses_bad_input_saying_what_was_expected(args, message):
    with pytest.raises(RiclError, match=message):
        KernelSurrogate.fit(*args)


def test_analyze_surrogate_command_prints_agreement_and_ece_per_run(perfect):
    result = CliRunner().invoke(app, ["analyze", "surrogate", str(perfect), "--bandwidth", "0.1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # the nearest demonstration carries the gold label, which the LM always predicts: the surrogate agrees
    assert re.fullmatch(r"knn-seed0: agreement 1\.000 uncalibrated, 1\.000 calibrated; ECE 0\.\d{3}, 0\.\d{3}; "
                        r"NLL \d\.\d{3}, \d\.\d{3} \(constant \d\.\d{3}\) \(n=12\)", lines[0]), lines[0]
    assert lines[1] == f"surrogate: {perfect / 'analysis' / 'surrogate.json'}"


def test_a_run_of_one_query_has_nothing_to_hold_out(tmp_path):
    results = load_results(write_dir(tmp_path / "one", [make_record("knn-seed0", 0, 1, 1, LABELS, SIMS)],
                                     {"task": "sst2"}, with_attention=False))
    assert applicable(results)["surrogate"] == "fewer than 2 queries in knn-seed0: none to hold out"


def test_doctests():
    assert doctest_failures(surrogate_module) == 0
