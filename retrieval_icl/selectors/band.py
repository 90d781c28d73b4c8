"""Demonstrations from a band of the similarity ranking: nearest, a middle band, or farthest (bandwidth studies)."""

from __future__ import annotations

import numpy as np

from .arrays import best_first
from .base import Ranking, Selector
from .checks import check_fraction, check_order


class SimilarityBandSelector(Selector):
    """The k pool examples from quantile `position` of the ranking by cosine (0 nearest, 0.5 middle, 1 farthest)."""

    name = "band"

    def __init__(self, position: float = 0.5, order: str = "nearest_last", seed: int = 0):
        self.order, self.seed = check_order(order), seed
        self.position = check_fraction("position", position, " (0 = nearest, 1 = farthest)")

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        pool = self.pool_
        vectors = self.index_.embeddings(pool.ids)  # (pool, d)
        return [self._band(vectors @ emb, pool.keep(text), k) for text, emb in zip(texts, embeddings)]

    def _band(self, sims: np.ndarray, keep: np.ndarray, k: int) -> Ranking:
        """The band of k rows for one query: sims (pool,) cosines, keep (pool,) rows the query may get."""
        ranked = best_first(sims, keep)  # most similar first
        start = round(self.position * (len(ranked) - k))
        band = ranked[start:start + k]
        return [int(i) for i in self.pool_.ids[band]], [float(s) for s in sims[band]]
