"""distribution.py: shifted pools and representative selections, paired by query (hand-made records, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from handmade_results import doctest_failures

from retrieval_icl.analysis import distribution
from retrieval_icl.analysis.distribution import analyze_distribution
from retrieval_icl.errors import RiclError
from retrieval_icl.results_dir import load_results


def test_shifted_pool_and_representative_selection_are_compared_by_query(study):
    out = analyze_distribution(load_results(study))
    typos = [r for r in out["pools"] if r["pool"] == "typos" and r["label_format"] == "default"]
    assert {r["pool_made_from"] for r in typos} == {"typos (rate 0.3)"}
    assert np.mean([r["diff_vs_in_distribution"] for r in typos]) < 0  # the synthetic typos pool costs 20 points
    rep = out["representative"]
    assert {r["run"].split("-")[0] for r in rep} == {"kmeans"} and len(rep) == 4
    assert all(r["versus"].startswith("random-") and 0 <= r["p_vs_random"] <= 1 for r in rep)


def test_distribution_needs_two_pools_or_a_representative_selector(perfect):
    with pytest.raises(RiclError, match="nothing to compare"):
        analyze_distribution(load_results(perfect))


def test_doctests():
    assert doctest_failures(distribution) == 0
