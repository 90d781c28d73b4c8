import numpy as np
import pytest
from scipy.stats import t as student_t

from retrieval_icl.stats import (
    bootstrap_ci,
    holm,
    mcnemar,
    non_inferiority,
    paired_bootstrap_ci,
    resolvable_margin,
    tost,
)


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


# 12 paired queries: the run alone right on queries 5, 6 and 11, the reference alone right on query 9.
RUN = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1], bool)
REF = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0], bool)
D = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, -1, 0, 1], float)  # run - reference per query


def test_paired_bootstrap_ci_resamples_query_ids_jointly_by_hand():
    rng = np.random.default_rng(7)
    means = D[rng.integers(0, 12, size=(2000, 12))].mean(axis=1)  # the same draws: 2000 resamples of 12 query ids
    found = paired_bootstrap_ci(RUN, REF, seed=7)
    assert found["value"] == pytest.approx(2 / 12)
    assert found["ci_low"] == pytest.approx(np.quantile(means, 0.025))
    assert found["ci_high"] == pytest.approx(np.quantile(means, 0.975))
    assert found["ci_low"] < 2 / 12 < found["ci_high"]


def test_non_inferiority_and_tost_equal_the_paired_t_by_hand():
    # mean 2/12 = 1/6; sum d^2 = 4, so var = (4 - 12 (1/6)^2) / 11 = 1/3 and se = sqrt(1/3) / sqrt(12) = 1/6
    mean, se, margin = 1 / 6, 1 / 6, 0.1
    assert D.mean() == pytest.approx(mean) and D.std(ddof=1) / np.sqrt(12) == pytest.approx(se)
    t_lower = (mean + margin) / se  # H0: diff <= -0.1: t = 1.6
    t_upper = (margin - mean) / se  # H0: diff >= +0.1: t = -0.4
    assert (t_lower, t_upper) == pytest.approx((1.6, -0.4))
    assert non_inferiority(D, margin) == pytest.approx(student_t.sf(1.6, 11))
    assert non_inferiority(D, margin) == pytest.approx(0.0690, abs=5e-4)
    assert tost(D, margin) == pytest.approx(max(student_t.sf(1.6, 11), student_t.sf(-0.4, 11)))
    assert tost(D, margin) == pytest.approx(student_t.sf(-0.4, 11))  # the upper bound is the binding one
    assert resolvable_margin(D) == pytest.approx(student_t.ppf(0.95, 11) / 6)


def test_a_margin_above_the_resolvable_one_shows_no_difference_non_inferior():
    symmetric = np.array([1, -1] * 50 + [0] * 300, float)  # mean 0, n = 400
    at = resolvable_margin(symmetric)
    assert non_inferiority(symmetric, at) == pytest.approx(0.05)
    assert non_inferiority(symmetric, at * 1.01) < 0.05 < non_inferiority(symmetric, at * 0.99)


def test_constant_differences_decide_by_the_side_of_the_margin_and_one_query_tests_nothing():
    assert (non_inferiority(np.zeros(5), 0.03), tost(np.zeros(5), 0.03)) == (0.0, 0.0)
    assert (non_inferiority(np.full(5, -1.0), 0.03), tost(np.full(5, 1.0), 0.03)) == (1.0, 1.0)
    assert non_inferiority(np.full(4, -0.5), 0.5) == 1.0  # on the margin: H0 holds
    assert np.isnan(non_inferiority(np.ones(1), 0.03)) and np.isnan(tost(np.array([]), 0.03))
    assert resolvable_margin(np.zeros(5)) == 0.0 and np.isnan(resolvable_margin(np.ones(1)))


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # 0.6 x 2 capped at 1; the running max carries it to 0.7
    assert holm([0.02, float("nan"), 0.04]) == pytest.approx([0.04, float("nan"), 0.04], nan_ok=True)
    assert holm([]) == []
