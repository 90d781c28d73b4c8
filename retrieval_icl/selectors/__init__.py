"""Selection strategies behind one interface, registered by name."""

from __future__ import annotations

from typing import Any

from ..errors import RiclError
from .balanced import BalancedSelector
from .band import SimilarityBandSelector
from .base import ORDERS, Selection, Selector
from .bm25 import BM25Selector
from .knn import KNNSelector
from .mmr import MMRSelector
from .random import RandomSelector
from .representative import KMeansSelector, VoteKSelector

SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (RandomSelector, KNNSelector, MMRSelector, BM25Selector, BalancedSelector, KMeansSelector, VoteKSelector,
                SimilarityBandSelector)
}


def make_selector(name: str, **params: Any) -> Selector:
    """A selector by registered name; an unknown name or parameter lists what is valid."""
    if name not in SELECTORS:
        raise RiclError(f"unknown selector {name!r}; known: {sorted(SELECTORS)}")
    try:
        return SELECTORS[name](**params)
    except TypeError as e:
        raise RiclError(f"selector {name!r}: {e}")


__all__ = ["ORDERS", "SELECTORS", "BM25Selector", "BalancedSelector", "KMeansSelector", "KNNSelector", "MMRSelector",
           "RandomSelector", "Selection", "Selector", "SimilarityBandSelector", "VoteKSelector", "make_selector"]
