"""Maximal marginal relevance (Carbonell & Goldstein 1998): relevant to the query, unlike each other."""

from __future__ import annotations

import numpy as np

from .arrays import mmr_order, nearest_candidates
from .base import Ranking, Selector
from .checks import check_fraction, check_order, check_positive_int


class MMRSelector(Selector):
    """Greedy MMR over the `fetch_k` nearest neighbours: lambda_mult=1 is knn, 0 is most diverse.

    Each step adds the candidate maximising `lambda_mult * cos(q, d) - (1 - lambda_mult) * max_s cos(d, s)`
    over the chosen set s; the first pick is always the nearest. The chosen demonstrations are then arranged
    by `order` from their cosine to the query, like knn.

    >>> MMRSelector(lambda_mult=0.5, fetch_k=20).lambda_mult
    0.5
    """

    name = "mmr"

    def __init__(self, lambda_mult: float = 0.5, fetch_k: int = 20, order: str = "nearest_last", seed: int = 0):
        self.order, self.seed = check_order(order), seed
        self.lambda_mult = float(check_fraction("lambda_mult", lambda_mult))
        self.fetch_k = check_positive_int("fetch_k", fetch_k)

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        excluded = [self.pool_.excluded_ids(t) for t in texts]
        found = nearest_candidates(self.index_, embeddings, max(self.fetch_k, k), excluded)  # fetch_k, at least k
        return [self._pick(ids, scores, k) for ids, scores in found]

    def _pick(self, ids: np.ndarray, scores: np.ndarray, k: int) -> Ranking:
        """MMR's k of one query's candidates: ids (fetch,) and cosines (fetch,), most similar first."""
        relevance = scores.astype(np.float64)  # (fetch,)
        vectors = self.index_.embeddings(ids)  # (fetch, d)
        picked = mmr_order(relevance, vectors @ vectors.T, k, self.lambda_mult)
        picked.sort(key=lambda i: -relevance[i])  # stable: knn's order among ties
        return [int(ids[i]) for i in picked], [float(relevance[i]) for i in picked]
