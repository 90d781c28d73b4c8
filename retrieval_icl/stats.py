"""Accuracy with bootstrap confidence intervals, and the paired McNemar test."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


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
    ids = np.arange(values.size) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    sums, counts = np.bincount(ids, values), np.bincount(ids).astype(np.float64)  # per cluster
    picks = rng.integers(0, sums.size, size=(n_resamples, sums.size))  # (n_resamples, clusters)
    return sums[picks].sum(1) / counts[picks].sum(1)


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
