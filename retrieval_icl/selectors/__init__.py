"""Selection strategies behind one interface, registered by name, and the array steps they compose."""

from __future__ import annotations

from .adaptive import AdaptiveSelector
from .arrays import best_first, cosines, first_kept, mmr_order, nearest
from .balanced import BalancedSelector
from .band import SimilarityBandSelector
from .base import SELECTORS, Selection, Selector, make_selector, order_selection, text_seed
from .bm25 import BM25Selector
from .checks import ORDERS
from .dpp import DPPSelector
from .knn import KNNSelector
from .mdl import MDLSelector
from .mmr import MMRSelector
from .random import RandomSelector
from .representative import KMeansSelector, VoteKSelector

__all__ = ["ORDERS", "SELECTORS", "AdaptiveSelector", "BM25Selector", "BalancedSelector", "DPPSelector",
           "KMeansSelector", "KNNSelector", "MDLSelector", "MMRSelector", "RandomSelector", "Selection", "Selector",
           "SimilarityBandSelector", "VoteKSelector", "best_first", "cosines", "first_kept", "make_selector",
           "mmr_order", "nearest", "order_selection", "text_seed"]
