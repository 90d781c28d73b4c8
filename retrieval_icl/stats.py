"""Accuracy with bootstrap confidence intervals, the paired McNemar test, and paired t tests of non-inferiority and
equivalence (TOST) at a margin, with Holm's correction across a family of tests."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from scipy.stats import binomtest
from scipy.stats import t as student_t

DEFAULT_MARGIN = 0.03  # the equivalence / non-inferiority margin in accuracy when a config declares none


def bootstrap_ci(correct: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a 0/1 vector."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, correct.size, size=(n_resamples, correct.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, float]:
    """Exact McNemar test on paired 0/1 outcomes: a_only = a right and b wrong, b_only the reverse."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have the same shape, got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if a_only + b_only == 0 else binomtest(a_only, a_only + b_only, 0.5).pvalue
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p)}


def cluster_bootstrap_means(values: np.ndarray, clusters: np.ndarray | None, n_resamples: int,
                            rng: np.random.Generator) -> np.ndarray:
    """Means of `values` (n,) over resamples of its clusters (n,) with replacement (each item its own cluster when
    None): (n_resamples,). A cluster is, say, one query scored under several seeds."""
    values = np.asarray(values, dtype=np.float64)
    return cluster_bootstrap_ratios(values, np.ones_like(values), clusters, n_resamples, rng)


def cluster_bootstrap_ratios(numerators: np.ndarray, denominators: np.ndarray, clusters: np.ndarray | None,
                             n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """sum(numerators) / sum(denominators) over resamples of the items' clusters (n,) with replacement:
    (n_resamples,). A mean is the ratio with denominators 1; a least-squares slope, of sum(x * y) to sum(x * x)."""
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    ids = np.arange(num.size) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    num_c, den_c = np.bincount(ids, num), np.bincount(ids, den)  # per cluster
    picks = rng.integers(0, num_c.size, size=(n_resamples, num_c.size))  # (n_resamples, clusters)
    return num_c[picks].sum(1) / den_c[picks].sum(1)


def bootstrap_p(resampled: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: the statistic is 0, from its resampled values (n_resamples,): twice the
    smaller share on either side of 0, each counted with the observed statistic ((count + 1) / (n + 1)), capped at 1.
    The percentile interval at confidence 1 - a excludes 0 about when p < a."""
    r = np.asarray(resampled, dtype=np.float64)
    side = min(int((r <= 0).sum()), int((r >= 0).sum()))
    return float(min(1.0, 2 * (side + 1) / (r.size + 1)))


def bootstrap_tost_p(resampled: np.ndarray, margin: float) -> float:
    """Bootstrap TOST p-value of H0: |statistic| >= margin: the larger share of resampled values at or beyond either
    margin, ((count + 1) / (n + 1)); below alpha, the 1 - 2 alpha percentile interval lies inside (-margin, margin)."""
    r = np.asarray(resampled, dtype=np.float64)
    beyond = max(int((r <= -margin).sum()), int((r >= margin).sum()))
    return float(min(1.0, (beyond + 1) / (r.size + 1)))


def adjusted_interval(resampled: np.ndarray, p: float, p_adjusted: float, alpha: float = 0.05) -> tuple[float, float]:
    """The percentile interval at the level a multiplicity adjustment left a test: confidence 1 - alpha * p /
    p_adjusted (Holm's p_adjusted >= p), so it excludes 0 about when p_adjusted < alpha."""
    level = alpha * p / p_adjusted if p_adjusted > 0 else alpha
    r = np.asarray(resampled, dtype=np.float64)
    return float(np.quantile(r, level / 2)), float(np.quantile(r, 1 - level / 2))


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None, confidence: float = 0.95,
                        n_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over paired items (n,) with a percentile bootstrap CI, resampling items (or their clusters)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    means = cluster_bootstrap_means(diff, clusters, n_resamples, np.random.default_rng(seed))
    alpha = (1 - confidence) / 2
    return {"value": float(diff.mean()), "ci_low": float(np.quantile(means, alpha)),
            "ci_high": float(np.quantile(means, 1 - alpha))}


def shifted_t_p(diff: np.ndarray, null: float, alternative: Literal["greater", "less"]) -> float:
    """One-sided paired t p-value (n - 1 df, se = sd(ddof=1) / sqrt(n)) of H0: mean(diff) <= null ("greater") or
    >= null ("less"); NaN for n < 2."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:  # no spread to estimate
        return float("nan")
    gap = d.mean() - null if alternative == "greater" else null - d.mean()
    se = d.std(ddof=1) / np.sqrt(d.size)
    if se == 0:  # every difference equals the mean: the data settle it, on the alternative's side of null or not
        return 0.0 if gap > 0 else 1.0
    return float(student_t.sf(gap / se, d.size - 1))


def non_inferiority(diff: np.ndarray, margin: float) -> float:
    """Paired t p-value of H0: mean(diff) <= -margin against H1: mean(diff) > -margin (diff: run - reference)."""
    return shifted_t_p(diff, -margin, "greater")


def tost(diff: np.ndarray, margin: float) -> float:
    """TOST equivalence p-value: the larger of the one-sided p-values of H0: mean <= -margin and H0: mean >= margin."""
    return max(shifted_t_p(diff, -margin, "greater"), shifted_t_p(diff, margin, "less"))


def resolvable_margin(diff: np.ndarray, confidence: float = 0.95) -> float:
    """The margin t_{confidence, n-1} * se: differences with this spread and a true mean of 0 are just shown
    non-inferior (and equivalent) at any margin above it. NaN for n < 2."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    return float(student_t.ppf(confidence, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values in the given order: the i-th smallest (from 0) times m - i, a running maximum, capped
    at 1. NaN p-values (tests not made) stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * (order.size - np.arange(order.size))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(v) for v in adjusted]
