"""Maximal marginal relevance (Carbonell & Goldstein 1998): relevant to the query, unlike each other."""

from __future__ import annotations

import numpy as np

from ..errors import RiclError
from .base import Selection, order_selection, text_seed
from .knn import KNNSelector


class MMRSelector(KNNSelector):
    """Greedy MMR over the `fetch_k` nearest neighbours: lambda_mult=1 is knn, 0 is most diverse.

    Each step adds the candidate maximising `lambda_mult * cos(q, d) - (1 - lambda_mult) * max_s cos(d, s)`
    over the chosen set s; the first pick is always the nearest. The chosen demonstrations are then arranged
    by `order` from their cosine to the query, like knn.

    >>> MMRSelector(lambda_mult=0.5, fetch_k=20).lambda_mult
    0.5
    """

    name = "mmr"

    def __init__(self, lambda_mult: float = 0.5, fetch_k: int = 20, order: str = "nearest_last", seed: int = 0):
        super().__init__(order=order, seed=seed)
        if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, (int, float)) or not 0 <= lambda_mult <= 1:
            raise RiclError(f"lambda_mult must be a number in [0, 1], got {lambda_mult!r}")
        if isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or fetch_k <= 0:
            raise RiclError(f"fetch_k must be a positive integer, got {fetch_k!r}")
        self.lambda_mult, self.fetch_k = float(lambda_mult), fetch_k

    def _select(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        fetch = min(max(self.fetch_k, k), len(self.index_))
        nearest = KNNSelector(order="nearest_first").fit(self.index_)
        # The fetch may fail only when the pool without the query is smaller than fetch; then take all that is left.
        try:
            candidates = nearest._select(texts, embeddings, fetch)
        except RiclError:
            candidates = [nearest._select([t], e[None], _available(self.index_, t, k))[0]
                          for t, e in zip(texts, embeddings)]
        return [self._one(text, cand, k) for text, cand in zip(texts, candidates)]

    def _one(self, text: str, candidates: Selection, k: int) -> Selection:
        relevance = np.asarray(candidates.scores, dtype=np.float64)  # (fetch,), most similar first
        vectors = self.index_.embeddings(candidates.demo_ids)  # (fetch, d)
        picked = mmr_order(relevance, vectors @ vectors.T, k, self.lambda_mult)
        picked.sort(key=lambda i: -relevance[i])  # stable: knn's order among ties
        return order_selection([candidates.demo_ids[i] for i in picked], [float(relevance[i]) for i in picked],
                               self.order, text_seed(self.seed, text))


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


def _available(index, text: str, k: int) -> int:
    """How many pool examples do not have the query's text; at least k, so knn reports a too-large k."""
    return max(k, sum(ex.text != text for ex in index.examples))
