"""The Selector interface: queries and k in, one Selection (demo ids, similarity scores, order) per query out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from ..errors import RiclError
from ..tasks import Example

if TYPE_CHECKING:
    from ..index import DemoIndex

Query = Union[str, Example]
ORDERS = ("nearest_last", "nearest_first", "random")


@dataclass(frozen=True)
class Selection:
    """Demonstrations for one query in prompt order (the last one sits next to the query)."""

    demo_ids: list[int]
    scores: list[float]  # cosine similarity of each demonstration to the query, same order


class Selector(ABC):
    """Chooses demonstrations from a fitted DemoIndex; returns ids and scores, nothing else. A subclass with a
    `name` is registered under it (SELECTORS), so `make_selector` can build it."""

    name: str = ""
    uses_seed: bool = True  # False when the seed cannot change the selection

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SELECTORS[cls.name] = cls

    def fit(self, index: "DemoIndex") -> "Selector":
        self.index_ = index
        return self

    def select(self, queries: Sequence[Query], k: int) -> list[Selection]:
        """One Selection of k demonstrations per query; a pool example with the query's text is never chosen."""
        index = self._fitted_index()
        if not isinstance(k, int) or k <= 0:
            raise RiclError(f"k must be a positive integer, got {k!r}")
        if k > len(index):
            raise RiclError(f"k={k} is larger than the pool ({len(index)} examples)")
        texts = [q.text if isinstance(q, Example) else q for q in queries]
        if any(not t.strip() for t in texts):
            raise RiclError("a query text is empty; every query needs non-empty text")
        embeddings = index.encoder.encode(texts) if texts else np.zeros((0, 0), np.float32)
        return self._select(texts, embeddings, k)

    @abstractmethod
    def _select(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        """Selections for queries already validated and embedded: texts[i] has embeddings[i] (n, d)."""

    def _fitted_index(self) -> "DemoIndex":
        if not hasattr(self, "index_"):
            raise RiclError(f"{type(self).__name__} is not fitted; call .fit(index) first")
        return self.index_


SELECTORS: dict[str, type[Selector]] = {}  # filled as each strategy module defines its class


def make_selector(name: str, **params: Any) -> Selector:
    """A selector by registered name; an unknown name or parameter lists what is valid."""
    if name not in SELECTORS:
        raise RiclError(f"unknown selector {name!r}; known: {sorted(SELECTORS)}")
    try:
        return SELECTORS[name](**params)
    except TypeError as e:
        raise RiclError(f"selector {name!r}: {e}")


def order_selection(ids: list[int], scores: list[float], order: str, rng: np.random.Generator) -> Selection:
    """Arrange demonstrations given most similar first into the requested prompt order."""
    if order == "nearest_first":
        return Selection(ids, scores)
    if order == "nearest_last":
        return Selection(ids[::-1], scores[::-1])
    if order == "random":
        perm = rng.permutation(len(ids))
        return Selection([ids[i] for i in perm], [scores[i] for i in perm])
    raise RiclError(f"unknown order {order!r}; expected one of {ORDERS}")


def text_seed(seed: int, text: str) -> np.random.Generator:
    """A generator seeded by (seed, query text): a query's random draw does not depend on its batch."""
    import hashlib

    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])
