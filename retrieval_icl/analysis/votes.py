"""Votes and tallies: label votes from kernel weights (per-label sums, argmax with ties broken at random), rates with
CIs, the most common value, records grouped by a key."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Hashable, Iterable, Sequence, TypeVar

import numpy as np

from ..record import RunRecord
from ..stats import bootstrap_ci, cluster_bootstrap_means

T = TypeVar("T")


def class_votes(weights: Sequence[np.ndarray], demo_labels: Sequence[Sequence[int]], n_labels: int) -> np.ndarray:
    """Per query, the summed weight of the demonstrations of each label: (queries, ..., n_labels)."""
    out = []
    for w, labels in zip(weights, demo_labels):
        onehot = np.eye(n_labels)[np.asarray(labels, dtype=np.int64)]  # (n_demos, n_labels)
        out.append(np.asarray(w, dtype=np.float64) @ onehot)  # (..., n_demos) @ (n_demos, C) -> (..., C)
    return np.stack(out)


def argmax_breaking_ties(votes: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Argmax over the last axis, ties broken uniformly at random (seeded): favours no label. Returns the
    predictions and where the top was tied (all-zero votes included), both of shape votes.shape[:-1].

    >>> argmax_breaking_ties(np.array([[0.0, 0.0], [0.2, 0.7]]))[1].tolist()
    [True, False]
    """
    votes = np.asarray(votes, dtype=np.float64)
    top = votes.max(-1, keepdims=True)
    tied = np.isclose(votes, top, rtol=1e-9, atol=1e-12)  # sums of the same weights in another order may differ by ulps
    noise = np.random.default_rng(seed).random(votes.shape)
    return np.where(tied, noise, -1.0).argmax(-1), tied.sum(-1) > 1


def raw_predictions(records: Sequence[RunRecord]) -> np.ndarray:
    """The model's uncalibrated predictions (what attention explains), whatever `prediction` was scored by."""
    return np.array([r.raw_prediction for r in records])


def normalise(weights: np.ndarray) -> np.ndarray:
    """Weights summed to 1 over the last axis (uniform where they sum to 0)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0, None)
    total = w.sum(-1, keepdims=True)
    return np.where(total > 0, w / np.where(total > 0, total, 1), 1.0 / max(w.shape[-1], 1))


def rate(hits: np.ndarray, seed: int = 0, clusters: np.ndarray | None = None) -> dict[str, float]:
    """Mean of a 0/1 vector with its 95% bootstrap CI; with clusters (n,) (query ids under several seeds, say),
    whole clusters are resampled."""
    hits = np.asarray(hits, dtype=bool)
    if clusters is None or hits.size == 0:
        lo, hi = bootstrap_ci(hits, seed=seed)
    else:
        means = cluster_bootstrap_means(hits, clusters, 2000, np.random.default_rng(seed))
        lo, hi = float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))
    return {"value": float(hits.mean()) if hits.size else float("nan"), "ci_low": lo, "ci_high": hi}


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """Items (records, table rows) grouped by key(item), groups and items in first-seen order.

    >>> group_by([3, 4, 5], lambda n: n % 2)
    {1: [3, 5], 0: [4]}
    """
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def most_common(values: Iterable[Hashable]) -> Hashable:
    """The most frequent value (the first seen among ties).

    >>> most_common(["L1H2", "L0H0", "L0H0", "L1H2"])
    'L1H2'
    """
    return Counter(values).most_common(1)[0][0]
