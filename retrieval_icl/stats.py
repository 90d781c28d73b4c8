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
