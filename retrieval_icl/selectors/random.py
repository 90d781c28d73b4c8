"""Random demonstrations: the baseline retrieval is compared against."""

from __future__ import annotations

import numpy as np

from .arrays import cosines, first_kept
from .base import Ranking, Selector, text_seed


class RandomSelector(Selector):
    """k pool examples drawn uniformly per query (seeded), never one the query may not get; kept in draw order."""

    name = "random"
    seeded_choice = True

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        return [self._draw(text, emb, k) for text, emb in zip(texts, embeddings)]

    def _draw(self, text: str, emb: np.ndarray, k: int) -> Ranking:
        pool = self.pool_
        rows = first_kept(text_seed(self.seed, text).permutation(len(pool)), pool.keep(text), k)
        ids = [int(pool.ids[r]) for r in rows]
        return ids, [float(s) for s in cosines(self.index_, ids, emb)]
