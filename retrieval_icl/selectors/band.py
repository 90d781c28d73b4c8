"""Demonstrations from a band of the similarity ranking: nearest, a middle band, or farthest (bandwidth studies)."""

from __future__ import annotations

import numpy as np

from ..errors import RiclError
from .base import Selection, order_selection, text_seed
from .knn import KNNSelector


class SimilarityBandSelector(KNNSelector):
    """The k pool examples starting at quantile `position` of the ranking by cosine (0 nearest, 0.5 middle, 1 farthest)."""

    name = "band"

    def __init__(self, position: float = 0.5, order: str = "nearest_last", seed: int = 0):
        super().__init__(order=order, seed=seed)
        if not 0.0 <= position <= 1.0:
            raise RiclError(f"position must be in [0, 1] (0 = nearest, 1 = farthest), got {position}")
        self.position = position

    def _select(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        index = self.index_
        pool_ids = np.asarray([ex.id for ex in index.examples])
        pool_texts = np.asarray([ex.text for ex in index.examples], dtype=object)
        vectors = index.embeddings(pool_ids)  # (pool, d)
        return [self._one(t, vectors @ e, k, pool_ids, pool_texts) for t, e in zip(texts, embeddings)]

    def _one(self, text: str, sims: np.ndarray, k: int, pool_ids: np.ndarray, pool_texts: np.ndarray) -> Selection:
        keep = pool_texts != text
        if keep.sum() < k:
            raise RiclError(f"k={k} is larger than the pool without the query ({int(keep.sum())} examples)")
        ranked = np.flatnonzero(keep)[np.argsort(-sims[keep], kind="stable")]  # most similar first
        start = round(self.position * (len(ranked) - k))
        band = ranked[start:start + k]
        return order_selection([int(i) for i in pool_ids[band]], [float(s) for s in sims[band]], self.order,
                               text_seed(self.seed, text))
