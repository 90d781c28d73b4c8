"""Array-level steps that selectors compose: nearest neighbours without the query, candidate fetches, rankings,
cosines, MMR order, greedy DPP MAP.

Each takes plain arrays (or a DemoIndex to search) and returns ids, rows or scores; none knows about selectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AbstractSet, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..retrieval.index import DemoIndex


def nearest(index: "DemoIndex", embeddings: np.ndarray, k: int,
            exclude_ids: Sequence[AbstractSet[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k examples nearest each query by cosine, best first, skipping the ids in exclude_ids[q].

    embeddings: (n, d) unit rows. Returns ids (n, k) int64 and scores (n, k) float32, padded with -1 / -inf where
    fewer than k remain (as FAISS pads). Searches k + 8 deep, and twice as deep again for the queries that lost
    too many neighbours to the exclusion.
    """
    ids = np.full((len(embeddings), k), -1, dtype=np.int64)
    scores = np.full((len(embeddings), k), -np.inf, dtype=np.float32)
    fetch, todo = min(k + 8, len(index)), list(range(len(embeddings)))
    while todo:
        found_scores, found_ids = index.search(embeddings[todo], fetch)  # (len(todo), fetch) each
        retry = []
        for row, q in enumerate(todo):
            skip = exclude_ids[q] if exclude_ids is not None else frozenset()
            cols = [c for c, i in enumerate(found_ids[row]) if i >= 0 and int(i) not in skip][:k]
            ids[q, :len(cols)], scores[q, :len(cols)] = found_ids[row, cols], found_scores[row, cols]
            if len(cols) < k and fetch < len(index):
                retry.append(q)
        todo, fetch = retry, min(2 * fetch, len(index))
    return ids, scores


def nearest_candidates(index: "DemoIndex", embeddings: np.ndarray, depth: int,
                       exclude_ids: Sequence[AbstractSet[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's `depth` nearest ids and cosines (m,) each, best first, without its exclude_ids[q]; all that
    remain where fewer do. embeddings: (n, d) unit rows; ids are unique, so a query's pool holds n - len(excluded)."""
    ids, scores = nearest(index, embeddings, min(depth, len(index)), exclude_ids)  # (n, fetch) each
    if (ids >= 0).all():
        return list(zip(ids, scores))
    # Some query's pool without it is smaller than the fetch: search again per query, as deep as its pool.
    rows = [nearest(index, e[None], len(index) - len(x), [x]) for e, x in zip(embeddings, exclude_ids)]
    return [(i[0][i[0] >= 0], s[0][i[0] >= 0]) for i, s in rows]


def best_first(scores: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Positions of `scores` (n,) from highest to lowest, ties in position order; only where `keep` (n,) is True."""
    rows = np.arange(len(scores)) if keep is None else np.flatnonzero(keep)
    return rows[np.argsort(-scores[rows], kind="stable")]


def first_kept(rows: Iterable[int], keep: np.ndarray, m: int) -> list[int]:
    """The first m of `rows` (positions into `keep`) where `keep` is True; fewer when the rows run out."""
    kept: list[int] = []
    for row in rows:
        if len(kept) == m:
            break
        if keep[row]:
            kept.append(int(row))
    return kept


def cosines(index: "DemoIndex", ids: Sequence[int], embedding: np.ndarray) -> np.ndarray:
    """Cosine of each example in `ids` to one query's unit embedding (d,): float32 (len(ids),)."""
    return index.embeddings(ids) @ embedding


def mmr_order(relevance: np.ndarray, similarity: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """Positions of k candidates in MMR pick order; relevance (n,), pairwise similarity (n, n)."""
    chosen = [int(np.argmax(relevance))]
    redundancy = similarity[chosen[0]].copy()  # (n,) max similarity to anything chosen so far
    while len(chosen) < min(k, len(relevance)):
        gain = lambda_mult * relevance - (1 - lambda_mult) * redundancy
        gain[chosen] = -np.inf
        chosen.append(int(np.argmax(gain)))
        redundancy = np.maximum(redundancy, similarity[chosen[-1]])
    return chosen


def dpp_greedy(relevance: np.ndarray, similarity: np.ndarray, k: int, tol: float = 1e-10) -> list[int]:
    """Positions of k candidates in greedy MAP order of log det L, L = diag(relevance) similarity diag(relevance).

    relevance (n,) > 0, similarity (n, n) positive semi-definite. The fast greedy of Chen et al. (2018): each pick
    adds one row to an incremental Cholesky factor, O(k^2 n). Once the best gain in det falls to `tol` times the
    largest diagonal entry of L (the rest is numerically in the span of the chosen), the rest go by relevance.
    """
    kernel = relevance[:, None] * similarity * relevance[None, :]  # (n, n)
    m = min(k, len(relevance))
    factor = np.zeros((m, len(relevance)))  # (m, n) row t: the t-th Cholesky column of L over the chosen, for all
    gains = kernel.diagonal().copy()  # (n,) det(L_{chosen + i}) / det(L_chosen), the Schur complement of i
    floor = tol * gains.max()
    chosen: list[int] = []
    while len(chosen) < m:
        best = int(np.argmax(gains))
        if gains[best] <= floor:
            break
        row = (kernel[best] - factor[:len(chosen), best] @ factor[:len(chosen)]) / np.sqrt(gains[best])  # (n,)
        factor[len(chosen)] = row
        chosen.append(best)
        gains = gains - row**2
        gains[chosen] = -np.inf
    return chosen + first_kept(best_first(relevance), ~np.isin(np.arange(len(relevance)), chosen), m - len(chosen))
