import numpy as np
import pytest

from retrieval_icl.stats import bootstrap_ci, mcnemar


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.7
    large = rng.random(5000) < 0.7
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5
    normal_width = 2 * 1.96 * np.sqrt(large.mean() * (1 - large.mean()) / large.size)
    assert hi_l - lo_l == pytest.approx(normal_width, rel=0.15)


def test_bootstrap_ci_of_a_constant_is_a_point():
    assert bootstrap_ci(np.ones(20)) == (1.0, 1.0)


def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_p_value():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 1], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1], bool)
    result = mcnemar(a, b)
    assert (result["a_only"], result["b_only"]) == (6, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5**6)
    assert mcnemar(a, a)["p_value"] == 1.0
