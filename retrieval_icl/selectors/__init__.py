"""Selection strategies behind one interface, registered by name."""

from __future__ import annotations

from typing import Any

from ..errors import RiclError
from .base import ORDERS, Selection, Selector
from .knn import KNNSelector
from .random import RandomSelector

SELECTORS: dict[str, type[Selector]] = {cls.name: cls for cls in (RandomSelector, KNNSelector)}


def make_selector(name: str, **params: Any) -> Selector:
    """A selector by registered name; an unknown name or parameter lists what is valid."""
    if name not in SELECTORS:
        raise RiclError(f"unknown selector {name!r}; known: {sorted(SELECTORS)}")
    try:
        return SELECTORS[name](**params)
    except TypeError as e:
        raise RiclError(f"selector {name!r}: {e}")


__all__ = ["ORDERS", "SELECTORS", "KNNSelector", "RandomSelector", "Selection", "Selector", "make_selector"]
