"""Random demonstrations: the baseline retrieval is compared against."""

from __future__ import annotations

import numpy as np

from ..errors import RiclError
from .base import Selection, Selector, text_seed


class RandomSelector(Selector):
    """k pool examples drawn uniformly per query (seeded), never one with the query's own text."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _select(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        index = self.index_
        pool_ids = np.array([ex.id for ex in index.examples])
        pool_texts = [ex.text for ex in index.examples]
        return [self._one(text, emb, k, pool_ids, pool_texts) for text, emb in zip(texts, embeddings)]

    def _one(self, text: str, emb: np.ndarray, k: int, pool_ids: np.ndarray, pool_texts: list[str]) -> Selection:
        rng = text_seed(self.seed, text)
        ids: list[int] = []
        for pos in rng.permutation(len(pool_ids)):
            if pool_texts[pos] != text:
                ids.append(int(pool_ids[pos]))
                if len(ids) == k:
                    break
        if len(ids) < k:
            raise RiclError(f"k={k} is larger than the pool without the query ({len(ids)} examples)")
        scores = self.index_.embeddings(ids) @ emb
        return Selection(ids, [float(s) for s in scores])
