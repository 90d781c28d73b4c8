"""Selection strategies behind one interface, registered by name."""

from __future__ import annotations

from .balanced import BalancedSelector
from .band import SimilarityBandSelector
from .base import ORDERS, SELECTORS, Selection, Selector, make_selector
from .bm25 import BM25Selector
from .knn import KNNSelector
from .mmr import MMRSelector
from .random import RandomSelector
from .representative import KMeansSelector, VoteKSelector

__all__ = ["ORDERS", "SELECTORS", "BM25Selector", "BalancedSelector", "KMeansSelector", "KNNSelector", "MMRSelector",
           "RandomSelector", "Selection", "Selector", "SimilarityBandSelector", "VoteKSelector", "make_selector"]
