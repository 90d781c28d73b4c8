"""KATE (Liu et al. 2022): the k pool examples nearest the query by cosine similarity."""

from __future__ import annotations

import numpy as np

from ..errors import RiclError
from .base import ORDERS, Selection, Selector, order_selection, text_seed


class KNNSelector(Selector):
    """Nearest neighbours by cosine; `order` puts the most similar nearest the query (default), first, or shuffles."""

    name = "knn"

    def __init__(self, order: str = "nearest_last", seed: int = 0):
        if order not in ORDERS:
            raise RiclError(f"unknown order {order!r}; expected one of {ORDERS}")
        self.order = order
        self.seed = seed

    @property
    def uses_seed(self) -> bool:  # type: ignore[override]
        return self.order == "random"

    def _select(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        index = self.index_
        fetch = min(k + 8, len(index))
        selections: list[Selection | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        while todo:
            scores, ids = index.search(embeddings[todo], fetch)
            retry = []
            for row, q in enumerate(todo):
                kept = [(int(i), float(s)) for i, s in zip(ids[row], scores[row])
                        if i >= 0 and index.example(int(i)).text != texts[q]][:k]
                if len(kept) == k:
                    selections[q] = order_selection([i for i, _ in kept], [s for _, s in kept], self.order,
                                                    text_seed(self.seed, texts[q]))
                elif fetch >= len(index):
                    raise RiclError(f"k={k} is larger than the pool without the query ({len(kept)} examples)")
                else:
                    retry.append(q)
            todo, fetch = retry, min(2 * fetch, len(index))
        return selections  # type: ignore[return-value]
