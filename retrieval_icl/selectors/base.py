"""The Selector interface: queries and k in, one Selection (demo ids, similarity scores, order) per query out.

`Selector.select` does every step that is the same for all strategies, once: it checks the request (fitted, k a
positive integer, queries with text, an index the same size as at fit for a selector that fitted state on it,
k no larger than the pool without the query), embeds the queries, asks the subclass's `_choose` for each query's
demonstrations best first, and arranges them in the prompt order `order` (seeded by `text_seed`).
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

import numpy as np

from ..data.examples import Example
from ..errors import RiclError
from ..retrieval.near_duplicates import NearDuplicates
from .checks import ORDERS, check_fresh, check_k, check_positive_int

if TYPE_CHECKING:
    from ..retrieval.index import DemoIndex

Query = Union[str, Example]
Ranking = tuple[list[int], list[float]]  # demo ids and their cosines to the query, best first
LabelProbs = Callable[[Sequence[str], Sequence[Sequence[int]]], np.ndarray]  # texts, demo ids -> (n, labels)


@dataclass(frozen=True)
class Selection:
    """Demonstrations for one query in prompt order (the last one sits next to the query)."""

    demo_ids: list[int]
    scores: list[float]  # cosine similarity of each demonstration to the query, same order


class PoolTexts:
    """The pool's ids (n,) and texts (n,) in FAISS row order, and which rows a query may not be shown: those with its
    text and, in a pool of several text fields, those sharing any one field with it (MNLI's sibling hypotheses of
    the query's premise), so no demonstration leaks the query or a near copy of it. With `near_duplicates`, also
    the pool's near-duplicates of the query (a phrase holding it or inside it, or most of its word trigrams: see
    near_duplicates.py); their tables are built on the first query that asks, once, and kept here."""

    def __init__(self, index: "DemoIndex", near_duplicates: bool = False) -> None:
        examples = index.examples
        self.ids = index.ids
        self.texts = np.asarray([ex.text for ex in examples], dtype=object)  # compares elementwise with ==
        self.n_fields = len(examples[0].texts) if examples else 1
        self.rows_by_text = _rows_by(ex.text for ex in examples)
        self.rows_by_field = [_rows_by(ex.texts[f] for ex in examples) for f in range(self.n_fields)]
        self.near_duplicates = near_duplicates
        self.duplicates = NearDuplicates(self.texts)  # cheap until asked: builds its tables on first use

    def __len__(self) -> int:
        return len(self.ids)

    def excluded_rows(self, text: str, near_duplicates: bool | None = None) -> list[int]:
        """Rows a query with this text may not get (its fields are the text's lines when they match the pool's);
        `near_duplicates` adds the pool's near-duplicates of it (None: the pool's own setting)."""
        rows = set(self.rows_by_text.get(text, ()))
        fields = text.split("\n")
        if self.n_fields > 1 and len(fields) == self.n_fields:
            for by_value, value in zip(self.rows_by_field, fields):
                rows.update(by_value.get(value, ()))
        if self.near_duplicates if near_duplicates is None else near_duplicates:
            rows.update(self.duplicates.rows(text))
        return sorted(rows)

    def keep(self, text: str, near_duplicates: bool | None = None) -> np.ndarray:
        """(n,) bool: the rows a query with this text may get."""
        mask = np.ones(len(self.ids), dtype=bool)
        mask[self.excluded_rows(text, near_duplicates)] = False
        return mask

    def excluded_ids(self, text: str, near_duplicates: bool | None = None) -> set[int]:
        """The ids of `excluded_rows`."""
        return {int(self.ids[r]) for r in self.excluded_rows(text, near_duplicates)}

    def available(self, text: str, near_duplicates: bool | None = None) -> int:
        """How many pool examples a query with this text may get."""
        return len(self.ids) - len(self.excluded_rows(text, near_duplicates))


def _rows_by(values: Iterable[str]) -> dict[str, list[int]]:
    """value -> the rows holding it, in row order."""
    rows: dict[str, list[int]] = {}
    for row, value in enumerate(values):
        rows.setdefault(value, []).append(row)
    return rows


class Selector(ABC):
    """Chooses demonstrations from a fitted DemoIndex; returns ids and scores, nothing else. A subclass with a
    `name` is registered under it (SELECTORS), so `make_selector` can build it."""

    name: str = ""
    order: str | None = None  # prompt order of the chosen demonstrations; None keeps `_choose`'s order
    seed: int = 0
    seeded_choice: bool = False  # True when the seed changes which demonstrations `_choose` picks
    fits_state: bool = False  # True when fit computes state from the pool, so a grown pool needs a new fit
    up_to_k: bool = False  # True when k is a maximum and `_choose` decides how many per query (adaptive)
    # True when it takes labelled calibration queries (`use_calibration`: adaptive fitting thresholds)
    calibrates: bool = False
    label_probs: LabelProbs | None = None  # the LM, for selectors that use it (set by `use_lm`)
    lm_name: str = ""  # the LM's name, so a fit made with another LM is not reused
    exclude_near_duplicates: bool = False  # also keep the pool's near-duplicates of a query out (set by make_selector)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SELECTORS[cls.name] = cls

    @property
    def uses_lm(self) -> bool:
        """True when the selector needs the language model (`use_lm`) before it fits or selects."""
        return False

    def use_lm(self, label_probs: LabelProbs, model: str = "") -> "Selector":
        """Score prompts with `label_probs(query_texts, demo_ids_in_prompt_order) -> (n, n_labels)` probabilities;
        `model` names the LM (a fit made with another LM is not reused). Returns self."""
        self.label_probs, self.lm_name = label_probs, model
        return self

    @property
    def uses_seed(self) -> bool:
        """False when the seed cannot change the selection."""
        return self.seeded_choice or self.order == "random"

    def fit(self, index: "DemoIndex") -> "Selector":
        """Remember the index and its pool's texts; a subclass fitting more state extends this. Returns self."""
        self.index_ = index
        self.pool_ = PoolTexts(index, near_duplicates=self.exclude_near_duplicates)
        return self

    def prepared(self, k: int) -> bool:
        """Whether a select of k runs without computing more state from the pool (needs fit)."""
        return True

    def prepare(self, k: int) -> "Selector":
        """Compute now the state a select of k would compute on first use (needs fit); returns self."""
        return self

    def prepared_ks(self) -> list[int]:
        """The k values `prepare` has computed state for (none for a selector without per-k state)."""
        return []

    def select(self, queries: Sequence[Query], k: int) -> list[Selection]:
        """One Selection of k demonstrations per query; never a pool example with the query's text or, in a pool of
        several text fields, sharing one of its fields (see PoolTexts)."""
        texts = [q.text if isinstance(q, Example) else q for q in queries]
        self._check_request(texts, k)
        if not texts:
            return []
        return self._arranged(texts, self.index_.encoder.encode(texts), k)

    def select_embedded(self, texts: Sequence[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        """`select` for queries already embedded: texts[i] has the unit embedding embeddings[i], (n, d)."""
        texts = list(texts)
        self._check_request(texts, k)
        if len(embeddings) != len(texts):
            raise RiclError(f"got {len(embeddings)} embeddings for {len(texts)} query texts; expected one per text")
        return self._arranged(texts, embeddings, k) if texts else []

    def _check_request(self, texts: list[str], k: int) -> None:
        index = self._fitted_index()
        check_positive_int("k", k)
        if any(not t.strip() for t in texts):
            raise RiclError("a query text is empty; every query needs non-empty text")
        if len(self.pool_) != len(index):
            if self.fits_state:
                check_fresh(self.name, len(self.pool_), len(index))
            self.pool_ = PoolTexts(index, self.exclude_near_duplicates)  # the index grew: nothing fitted, re-read it
        for available in [self.pool_.available(t) for t in texts] or [len(self.pool_)]:
            check_k(k, available)  # the first query short of k names its own count

    def _arranged(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        selections = []
        for text, (ids, scores) in zip(texts, self._choose(texts, embeddings, k)):
            check_k(1 if self.up_to_k else k, len(ids))  # an approximate index (IVF, HNSW) may find fewer
            if self.order is None:
                selections.append(Selection(ids, scores))
            else:
                selections.append(order_selection(ids, scores, self.order, text_seed(self.seed, text)))
        return selections

    @abstractmethod
    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        """k demonstrations per query, best first, none the query may not get (`pool_.keep`); texts[i] has
        embeddings[i] (n, d).

        Called after the checks: the selector is fitted and the pool without each query holds at least k."""

    def in_prompt_order(self, text: str, ranking: Ranking) -> list[int]:
        """A ranking's demo ids as `select` arranges them for this query, so an LM scores the prompt then shown."""
        if self.order is None:
            return ranking[0]
        return order_selection(*ranking, self.order, text_seed(self.seed, text)).demo_ids

    def fit_report(self) -> dict[str, Any] | None:
        """What fit learned from the pool, for run_info.json (None when it learns nothing worth reporting)."""
        return None

    def _fitted_index(self) -> "DemoIndex":
        if not hasattr(self, "index_"):
            raise RiclError(f"{type(self).__name__} is not fitted; call .fit(index) first")
        return self.index_


SELECTORS: dict[str, type[Selector]] = {}  # filled as each strategy module defines its class


def make_selector(name: str, exclude_near_duplicates: bool = False, **params: Any) -> Selector:
    """A selector by registered name; an unknown name or parameter lists what is valid. Every selector takes
    `exclude_near_duplicates`: never show a query a pool example that is a near-duplicate of it (see PoolTexts)."""
    if name not in SELECTORS:
        raise RiclError(f"unknown selector {name!r}; known: {sorted(SELECTORS)}")
    if not isinstance(exclude_near_duplicates, bool):
        raise RiclError(f"exclude_near_duplicates must be true or false, got {exclude_near_duplicates!r}")
    try:
        selector = SELECTORS[name](**params)
    except TypeError as e:
        accepted = [p.name for p in inspect.signature(SELECTORS[name]).parameters.values() if p.kind != p.VAR_KEYWORD]
        raise RiclError(f"selector {name!r}: {e}; its parameters: {accepted} (and exclude_near_duplicates, as every "
                        "selector's)")
    selector.exclude_near_duplicates = exclude_near_duplicates
    return selector


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
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])
