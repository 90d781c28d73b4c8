"""The kernel claims' controls on planted heads: baselines, repeated splits, the permutation null, kappa, paired
bootstrap (analysis/controls.py, stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from handmade_results import doctest_failures, run_record

from retrieval_icl.analysis import controls
from retrieval_icl.analysis.controls import ReconstructionControls, baseline_predictions, kappa, shuffled_labels
from retrieval_icl.errors import RiclError
from retrieval_icl.stats import paired_bootstrap_ci

Q, L, H, D = 200, 2, 3, 8


def noise(rng: np.random.Generator, n: int = Q) -> np.ndarray:
    """(n, L, H, D) attention of heads that read nothing."""
    return rng.random((n, L, H, D))


def planted_kernel(seed: int = 0):
    """The LM predicts by kernel regression over similarity; head (1, 0) attends in proportion to that kernel."""
    rng = np.random.default_rng(seed)
    labels, sims = rng.integers(0, 2, (Q, D)), rng.random((Q, D))
    kernel = np.exp(sims / 0.5)
    lm = np.array([np.bincount(y, w, minlength=2).argmax() for y, w in zip(labels, kernel)])
    weights = noise(rng)
    weights[:, 1, 0] = kernel / kernel.sum(1, keepdims=True)
    records = [run_record(y.tolist(), s.tolist(), label_log_probs=[0.0, 0.0]) for y, s in zip(labels, sims)]
    return weights, labels, lm, records


def test_a_head_copying_the_last_demo_does_not_beat_the_last_demo_baseline():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (Q, D))
    weights = noise(rng)
    weights[:, 0, 2] = 0.0
    weights[:, 0, 2, -1] = 1.0  # head (0, 2) reads the last demonstration only; the LM copies its label
    lm = labels[:, -1]
    records = [run_record(y.tolist(), rng.random(D).tolist()) for y in labels]
    c = ReconstructionControls(n_splits=10, n_null=50).fit(weights, labels, lm, rng.integers(0, 2, Q),
                                                           baselines=baseline_predictions(records, 2), n_labels=2)
    assert c.head_names() == ["L0H2"] * 10
    assert c.summary_["reconstruction_agreement"]["value"] == 1.0
    margin = c.summary_["margin_over_best_baseline"]
    assert (margin["value"], margin["ci_low"], margin["ci_high"]) == (0.0, 0.0, 0.0)
    assert set(c.best_baselines_) == {"last_demo"}
    assert "does not beat the best baseline" in c.verdict()


def test_a_kernel_head_beats_every_baseline_and_the_null():
    weights, labels, lm, records = planted_kernel()
    baselines = baseline_predictions(records, 2)
    c = ReconstructionControls(n_splits=20, n_null=200).fit(weights, labels, lm, lm, baselines=baselines, n_labels=2)
    assert set(c.head_names()) == {"L1H0"} and c.layers_ == {1: 20}
    for name in baselines:
        assert c.summary_[f"{name}_agreement"]["value"] < 0.95, name
    margin = c.summary_["margin_over_best_baseline"]
    assert margin["ci_low"] > 0.05
    assert c.p_value_ < 0.01 and c.p_value_ == pytest.approx(1 / 201)
    assert c.null_.max() < c.statistic_ == 1.0
    assert "beats the best baseline" in c.verdict() and "shuffled labels do worse" in c.verdict()


def test_the_null_of_pure_noise_heads_is_uniform_ish():
    small = []
    for trial in range(200):
        rng = np.random.default_rng(1000 + trial)
        labels = rng.integers(0, 2, (60, D))
        lm = (labels.mean(1) > 0.5).astype(int)  # the LM follows the labels' majority; no head reads anything
        c = ReconstructionControls(n_splits=3, n_null=99, n_resamples=60, seed=trial).fit(
            noise(rng, 60), labels, lm, lm, n_labels=2)
        small.append(c.p_value_ < 0.05)
    assert np.mean(small) <= 0.10


def test_shuffling_keeps_each_prompts_labels_and_its_padding():
    labels = np.array([[0, 1, 1, 0], [2, 1, 0, 0]])
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    out = shuffled_labels(labels, mask, np.random.default_rng(0))
    assert sorted(out[0, :3]) == [0, 1, 1] and out[0, 3] == 0 and sorted(out[1]) == [0, 0, 1, 2]


def test_kappa_and_the_paired_bootstrap_equal_hand_computations():
    a = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])
    b = np.array([0, 1, 1, 1, 0, 0, 1, 0, 1, 0])
    observed = np.mean(a == b)  # 0.7
    chance = np.mean(a == 0) * np.mean(b == 0) + np.mean(a == 1) * np.mean(b == 1)  # 0.4 * 0.5 + 0.6 * 0.5
    assert kappa(a, b, 2) == pytest.approx((observed - chance) / (1 - chance))  # 0.4
    assert kappa(np.zeros(10, int), np.zeros(10, int), 2) == 0.0  # undefined: one label throughout
    hits_a, hits_b = a == 1, b == 1
    found = paired_bootstrap_ci(hits_a, hits_b, n_resamples=500, seed=3)
    rng = np.random.default_rng(3)
    picks = rng.integers(0, 10, size=(500, 10))
    diffs = [np.mean(hits_a[p].astype(float) - hits_b[p]) for p in picks]
    assert found["value"] == pytest.approx(0.1)
    assert (found["ci_low"], found["ci_high"]) == pytest.approx((np.quantile(diffs, 0.025),
                                                                 np.quantile(diffs, 0.975)))


def test_clusters_resample_whole_queries():
    hits_a, hits_b = np.array([1, 1, 0, 0]), np.array([0, 0, 0, 0])
    found = paired_bootstrap_ci(hits_a, hits_b, clusters=np.array([7, 7, 9, 9]), n_resamples=400, seed=0)
    assert found["value"] == 0.5 and found["ci_low"] == 0.0 and found["ci_high"] == 1.0  # 2 clusters: 0, 0.5, 1


def test_repeated_splits_are_deterministic_and_the_depth_histogram_sums_to_the_splits():
    weights, labels, _, _ = planted_kernel(seed=2)
    lm = np.random.default_rng(5).integers(0, 2, Q)  # heads tie with chance: the chosen head varies by split
    fit = [ReconstructionControls(n_splits=25, n_null=5, seed=4).fit(weights, labels, lm, lm, n_labels=2)
           for _ in range(2)]
    assert fit[0].head_names() == fit[1].head_names() and len(set(fit[0].head_names())) > 1
    assert sum(fit[0].layer_counts().values()) == 25 and set(fit[0].layer_counts()) == {0, 1}
    assert fit[0].summary_ == fit[1].summary_ and np.array_equal(fit[0].null_, fit[1].null_)
    other = ReconstructionControls(n_splits=25, n_null=5, seed=5).fit(weights, labels, lm, lm, n_labels=2)
    assert not np.array_equal(other.selection_, fit[0].selection_)


def test_a_query_under_two_seeds_falls_on_one_side_of_every_split():
    weights, labels, lm, _ = planted_kernel()
    ids = list(range(Q // 2)) * 2  # Q/2 queries, each scored twice (two seeds)
    c = ReconstructionControls(n_splits=5, n_null=0).fit(weights, labels, lm, lm, ids, n_labels=2)
    assert np.array_equal(c.selection_[:, :Q // 2], c.selection_[:, Q // 2:])


def test_baselines_by_hand():
    records = [run_record([0, 1, 1], [0.9, 0.1, 0.2], label_log_probs=[-1.0, -0.5, -3.0],
                          calibrated_log_probs=[-0.2, -1.7, -1.0]),
               run_record([2, 0], [0.1, 0.3], label_log_probs=[-0.1, -3.0, -3.0],
                          calibrated_log_probs=[-1.0, -0.5, -1.0]),
               run_record([], [], label_log_probs=[-1.0, -1.0, -1.0], calibrated_log_probs=[-1.0, -1.0, -1.0])]
    found = {k: v.tolist() for k, v in baseline_predictions(records, 3).items()}
    assert found["majority"][:1] == [1] and found["majority"][1] in (0, 2) and found["majority"][2] == -1
    assert found["last_demo"] == [1, 0, -1] and found["first_demo"] == [0, 2, -1]
    assert found["nearest_demo"] == [0, 0, -1]
    assert found["lm_prior"][:2] == [1, 0]  # content-free = raw - calibrated: [-0.8, 1.2, -2.0], [0.9, -2.5, -2.0]
    records[0] = records[0].model_copy(update={"calibrated_log_probs": None})
    assert "lm_prior" not in baseline_predictions(records, 3)


def test_bad_settings_are_refused():
    weights, labels, lm, _ = planted_kernel()
    with pytest.raises(RiclError, match="n_splits must be >= 1"):
        ReconstructionControls(n_splits=0).fit(weights, labels, lm, lm)


def test_doctests():
    assert doctest_failures(controls) == 0
