"""Determinantal point process (Kulesza & Taskar 2012; OpenICL's DPPRetriever): relevant to the query, unlike each
other, as one log det instead of MMR's pairwise penalty."""

from __future__ import annotations

import numpy as np

from .arrays import dpp_greedy, nearest_candidates
from .base import Ranking, Selector
from .checks import check_greater, check_order, check_positive_int


class DPPSelector(Selector):
    """Greedy MAP of a DPP over the `fetch_k` nearest neighbours (at least k).

    The kernel is L = diag(r) S diag(r), S the candidates' pairwise cosines and r_i = exp(cos(q, d_i) / (2 * scale))
    their relevance (OpenICL's scale_factor): a small scale favours relevance, a large one diversity. The k
    candidates are picked greedily for the largest log det L (Chen et al. 2018), and arranged by `order` from
    their cosine to the query, like knn.

    >>> DPPSelector(fetch_k=30, scale=0.05).scale
    0.05
    """

    name = "dpp"

    def __init__(self, fetch_k: int = 20, scale: float = 0.1, order: str = "nearest_last", seed: int = 0):
        self.order, self.seed = check_order(order), seed
        self.fetch_k = check_positive_int("fetch_k", fetch_k)
        self.scale = float(check_greater("scale", scale, 0))

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        excluded = [self.pool_.excluded_ids(t) for t in texts]
        found = nearest_candidates(self.index_, embeddings, max(self.fetch_k, k), excluded)  # fetch_k, at least k
        return [self._pick(ids, scores, k) for ids, scores in found]

    def _pick(self, ids: np.ndarray, scores: np.ndarray, k: int) -> Ranking:
        """The DPP's k of one query's candidates: ids (fetch,) and cosines (fetch,), most similar first."""
        cos = scores.astype(np.float64)  # (fetch,)
        vectors = self.index_.embeddings(ids).astype(np.float64)  # (fetch, d)
        # Shifting by the largest cosine scales L by a constant, so the same k win, and exp cannot overflow.
        relevance = np.exp((cos - cos.max()) / (2 * self.scale))
        picked = sorted(dpp_greedy(relevance, vectors @ vectors.T, k), key=lambda i: (-cos[i], i))  # knn's tie order
        return [int(ids[i]) for i in picked], [float(cos[i]) for i in picked]
