"""bandwidth.py: accuracy by similarity of the demonstrations, and the kernel's entropy (no model)."""

from __future__ import annotations

import numpy as np
import pytest
from handmade_results import doctest_failures

from retrieval_icl.analysis import bandwidth
from retrieval_icl.analysis.bandwidth import BinnedAccuracy, analyze_bandwidth, condition_rows, entropy
from retrieval_icl.results_dir import load_results


def test_binned_accuracy_rises_with_similarity_when_correctness_does():
    rng = np.random.default_rng(0)
    sims = rng.uniform(0, 1, 2000)
    correct = rng.random(2000) < sims  # P(correct) = similarity
    b = BinnedAccuracy(n_bins=4).fit(sims, correct)
    assert np.all(np.diff(b.accuracy_) > 0) and b.correlation_ > 0.3 and b.p_value_ < 1e-6
    assert b.counts_.sum() == 2000 and all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in b.rows())


def test_entropy_is_zero_for_one_demo_and_one_for_uniform_weights():
    assert entropy(np.array([0.0, 1.0, 0.0])) == 0.0
    assert entropy(np.ones(8)) == pytest.approx(1.0)


def test_bandwidth_conditions_are_named_by_selector_parameters(study):
    results = load_results(study)
    rows = {r["selector"]: r for r in condition_rows(results)}
    assert rows["far"]["description"] == "band(position=1.0)" and rows["knn"]["description"] == "knn"
    assert rows["knn"]["mean_similarity"] > rows["random"]["mean_similarity"] > rows["far"]["mean_similarity"]
    assert rows["knn"]["accuracy"] > rows["far"]["accuracy"] and rows["knn"]["n"] == 60  # first format and pool only
    out = analyze_bandwidth(results, n_bins=3)
    assert out["entropy"] and (study / "analysis" / "bandwidth_conditions.png").exists()
    assert set(out["random_bins"]) == {4}


def test_doctests():
    assert doctest_failures(bandwidth) == 0
