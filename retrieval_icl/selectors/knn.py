"""KATE (Liu et al. 2022): the k pool examples nearest the query by cosine similarity."""

from __future__ import annotations

import numpy as np

from .arrays import nearest
from .base import Ranking, Selector
from .checks import check_order


class KNNSelector(Selector):
    """Nearest neighbours by cosine; `order` puts the most similar nearest the query (default), first, or shuffles."""

    name = "knn"

    def __init__(self, order: str = "nearest_last", seed: int = 0):
        self.order, self.seed = check_order(order), seed

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        ids, scores = nearest(self.index_, embeddings, k, [self.pool_.excluded_ids(t) for t in texts])  # (n, k) each
        return [_as_ranking(i, s) for i, s in zip(ids, scores)]


def _as_ranking(ids: np.ndarray, scores: np.ndarray) -> Ranking:
    """One query's row of `nearest` as python ids and floats, without the -1 padding."""
    found = ids >= 0
    return [int(i) for i in ids[found]], [float(s) for s in scores[found]]
