"""The application API: open a saved index, select demonstrations with their fields and labels, add examples.

>>> from retrieval_icl.serving.demo_selector import DemoSelector
>>> demos = DemoSelector.load("indexes/sst2-train", strategy="mmr", lambda_mult=0.5)  # doctest: +SKIP
>>> [(d.fields["sentence"], d.label_name, round(d.score, 2))
...  for d in demos.select("a moving film", k=2)]  # doctest: +SKIP
[('a moving experience', 'positive', 0.81), ('moving and funny', 'positive', 0.84)]
>>> chosen = demos.select("a moving film", k=8, max_tokens=120)  # doctest: +SKIP
>>> demos.prompt_tokens("a moving film", chosen) <= 120  # doctest: +SKIP
True
>>> [len(c) for c in demos.select_many(["a moving film", "a dull plot"], k=2)]  # one encoder call  # doctest: +SKIP
[2, 2]
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.examples import Example
from ..errors import NotFittedYetError, RiclError
from ..lm.models import DEFAULT_MODEL
from ..lm.prompts import check_budget
from ..retrieval.index import DemoIndex
from ..retrieval.sentence_encoder import Encoder
from ..selectors.base import SELECTORS, Selector, make_selector
from .prompt_budget import PromptBudget, index_text_fields

Query = str | Mapping[str, str]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectedExample:
    """One chosen demonstration: its id, text fields by name, label id and name, cosine to the query."""

    id: int
    fields: dict[str, str]
    label: int
    label_name: str | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class DemoSelector:
    """A DemoIndex plus selectors, safe to share between threads: one lock orders selects, another orders adds.

    Selectors are fitted on first use per strategy (and k, for those that fit per k). An add refits the fitted ones
    on the grown pool without holding up selects, then swaps pool and fits in at once, so a select never sees a pool
    that is half updated. With `background_fits` (the service) a select never fits: one whose fit is missing raises
    NotFittedYetError at once and the fit runs in a background thread. `save()` writes the index back atomically.
    Token budgets count with `tokenizer`: a model name for retrieval_icl.lm.models (default DEFAULT_MODEL, loaded
    offline on the first budgeted select) or a Hugging Face tokenizer object; prompts are rendered with the index's
    task template in `label_format` (see PromptBudget).
    """

    def __init__(self, index: DemoIndex, directory: str | Path | None = None, strategy: str = "knn", seed: int = 0,
                 tokenizer: Any = None, label_format: str = "default", background_fits: bool = False,
                 **params: Any) -> None:
        self.index, self.strategy, self.seed, self.params = index, strategy, seed, params
        self.background_fits = background_fits
        self.directory = Path(directory) if directory is not None else None
        self.tokenizer, self.label_format = tokenizer if tokenizer is not None else DEFAULT_MODEL, label_format
        make_selector(strategy, seed=seed, **params)  # an unknown strategy or parameter fails now
        self._fitted: dict[str, Selector] = {}
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()  # adds, one at a time, off the select lock
        self._fits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ricl-fit", initializer=_yielding_thread)
        self._pending: set[tuple[str, int]] = set()  # (strategy, k) fits queued or running
        self._pending_lock = threading.Lock()

    @classmethod
    def load(cls, directory: str | Path, strategy: str = "knn", seed: int = 0, encoder: Encoder | None = None,
             use_cache: bool = False, tokenizer: Any = None, label_format: str = "default",
             background_fits: bool = False, **params: Any) -> "DemoSelector":
        """Open a saved index; `params` go to the default strategy. Queries skip the embedding cache by default."""
        index = DemoIndex.load(directory, encoder=encoder)
        # A service sees most query texts once: caching them would write a database row per request.
        index.encoder.use_cache = use_cache
        return cls(index, directory, strategy=strategy, seed=seed, tokenizer=tokenizer, label_format=label_format,
                   background_fits=background_fits, **params)

    @cached_property
    def text_fields(self) -> list[str]:
        """Names of the text fields: the manifest's, else the task's, else text / text1, text2, ..."""
        return index_text_fields(self.index)

    @cached_property
    def label_names(self) -> list[str] | None:
        """Label names by id, from the manifest (None when the index was built without them)."""
        return self.index.manifest.label_names

    @cached_property
    def prompt_budget(self) -> PromptBudget:
        """How this index's prompts are rendered and counted for token budgets (the tokenizer loads on first use)."""
        return PromptBudget(self.index.manifest.task, self.text_fields, self.label_names, self.tokenizer,
                            self.label_format)

    def __len__(self) -> int:
        return len(self.index)

    def warm_up(self, strategies: Sequence[str] = (), tokenizer: bool = False) -> "DemoSelector":
        """Load the encoder and fit the default strategy (and `strategies`) now rather than on the first request;
        with `tokenizer`, load the token budget's tokenizer too; returns self."""
        with self._lock:
            self.index.loaded_encoder()  # checked against the index's manifest: the weights that embedded the pool
            for strategy in dict.fromkeys([self.strategy, *strategies]):
                self._selector(strategy)
            if tokenizer:
                self.prompt_budget.loaded_tokenizer()
        return self

    def select(self, query: Query, k: int, strategy: str | None = None,
               max_tokens: int | None = None) -> list[SelectedExample]:
        """k demonstrations for one query (text, or a dict of the text fields), in prompt order. With `max_tokens`,
        those of the k that fit max_tokens tokens of the rendered prompt, query included: the most similar first, each
        kept only if the whole prompt with it still fits (PromptBuilder.build); RiclError when not even one fits."""
        return self.select_many([query], k, strategy, max_tokens)[0]

    def select_many(self, queries: Sequence[Query], k: int, strategy: str | None = None,
                    max_tokens: int | None = None, embeddings: np.ndarray | None = None) -> list[list[SelectedExample]]:
        """`select` for several queries at once: one encoder call and one selector search for all of them, under one
        hold of the lock; the same selections as one by one (scores within float rounding of a batched encoder pass).
        `embeddings` (n, d): the queries' rows of `embed`, when one encoder call serves several select_many calls.
        One bad query fails the whole call."""
        if isinstance(queries, (str, Mapping)):
            raise RiclError("select_many expects a list of queries; use select for one query")
        texts = [self.query_text(q) for q in queries]
        check_budget(max_tokens)
        with self._lock:
            selector = self._selector(strategy or self.strategy, k)
            vectors = self.index.loaded_encoder().encode(texts) if embeddings is None else embeddings  # (n, d)
            selections = selector.select_embedded(texts, vectors, k)
            chosen = [[self._selected(i, s) for i, s in zip(sel.demo_ids, sel.scores)] for sel in selections]
            if max_tokens is None:
                return chosen
            return [self._within_budget(q, c, max_tokens) for q, c in zip(queries, chosen)]

    def embed(self, queries: Sequence[Query]) -> np.ndarray:
        """(n, d) unit embeddings of the queries' texts (`query_text`), in one encoder call."""
        texts = [self.query_text(q) for q in queries]
        with self._lock:  # the encoder's tokenizer is not safe to share between threads; adds use it too
            return self.index.loaded_encoder().encode(texts)

    def _within_budget(self, query: Query, chosen: list[SelectedExample], max_tokens: int) -> list[SelectedExample]:
        """Those of `chosen` that PromptBudget.trim keeps within max_tokens, in prompt order (the lock is held)."""
        prompt = self.prompt_budget.trim(self._demos(chosen), self.query_fields(query), [c.score for c in chosen],
                                        max_tokens)
        kept = set(prompt.demo_ids)
        return [c for c in chosen if c.id in kept]

    def prompt_tokens(self, query: Query, examples: Sequence[SelectedExample]) -> int:
        """Tokens of the prompt rendered with these examples, in this order, and the query (the sink token included),
        counted with this selector's tokenizer: what `select(..., max_tokens=N)` keeps at most N of."""
        query_texts = self.query_fields(query)
        with self._lock:
            return self.prompt_budget.count(self._demos(examples), query_texts)

    def _demos(self, examples: Sequence[SelectedExample]) -> list[Example]:
        return [Example(c.id, tuple(c.fields[f] for f in self.text_fields), c.label) for c in examples]

    def query_text(self, query: Query) -> str:
        """The text embedded for a query: a string, or a dict's text fields joined by a newline; stripped like pools."""
        if isinstance(query, str):
            return _checked_text(query, "query text")
        return "\n".join(self.query_fields(query))

    def query_fields(self, query: Query) -> tuple[str, ...]:
        """The query's text fields in the index's order: a dict's values, or a string's lines (one per field)."""
        if isinstance(query, str):
            n = len(self.text_fields)
            parts = _checked_text(query, "query text").split("\n", n - 1)
            if len(parts) != n:
                raise RiclError(f"the query text has {len(parts)} line(s), expected one per text field "
                                f"{self.text_fields}; give the query as a dict of its fields")
            return tuple(_checked_text(p, f"query field {f!r}") for f, p in zip(self.text_fields, parts))
        if not isinstance(query, Mapping):
            raise RiclError(f"a query must be a string or a dict of text fields, got {type(query).__name__}")
        return tuple(_checked_text(t, f"query field {f!r}") for f, t in self._fields_in_order(query).items())

    def _fields_in_order(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        expected = self.text_fields
        if set(fields) != set(expected):
            raise RiclError(f"fields {sorted(fields)} do not match the index's text fields {expected}")
        return {f: fields[f] for f in expected}

    def fitted_for(self, strategy: str, k: int) -> bool:
        """Whether a select with this strategy and k runs without fitting anything first. Takes no lock, so a request
        is checked while the worker holds it: fits are swapped in whole, a dict lookup sees one or the other."""
        selector = self._fitted.get(strategy)
        return selector is not None and selector.prepared(k)

    def require_fitted(self, strategy: str, k: int) -> None:
        """Nothing when a select with this strategy and k runs without fitting; else NotFittedYetError, the fit
        started in the background thread."""
        if not self.fitted_for(strategy, k):
            self.fit_later(strategy, k)
            raise NotFittedYetError(f"strategy {strategy!r} for k={k} is being fitted to this index; retry shortly")

    def fit_later(self, strategy: str, k: int) -> None:
        """Fit the strategy for k in the background thread (once, however often asked), off the select lock."""
        _check_known(strategy)
        with self._pending_lock:
            if (strategy, k) not in self._pending:
                self._pending.add((strategy, k))
                self._fits.submit(self._fit_for, strategy, k)

    def _fit_for(self, strategy: str, k: int) -> None:
        """Fit on the pool as it is now, off both locks (an add is not held up); kept only if no add swapped the pool
        in the meantime (the add then refits the strategy itself, and asks for k again)."""
        try:
            index, selector = self.index, self._fitted.get(strategy)
            if selector is None:
                selector = self._new_selector(strategy, index)
            selector.prepare(k)
            with self._lock:
                if self.index is index:
                    self._fitted[strategy] = selector
        except Exception:  # a later request asks again
            log.exception("background fit of %s for k=%d failed", strategy, k)
        finally:
            with self._pending_lock:
                self._pending.discard((strategy, k))

    def _selector(self, strategy: str, k: int | None = None) -> Selector:
        """The fitted selector for a strategy (the lock is held), fitted now if need be; with `background_fits` and a
        k, NotFittedYetError when it is not fitted for k yet, its fit started."""
        if self.background_fits and k is not None:
            self.require_fitted(strategy, k)
        if strategy not in self._fitted:
            self._fitted[strategy] = self._new_selector(strategy, self.index)
        return self._fitted[strategy]

    def _new_selector(self, strategy: str, index: DemoIndex) -> Selector:
        _check_known(strategy)
        params = self.params if strategy == self.strategy else {}
        return make_selector(strategy, seed=self.seed, **params).fit(index)

    def _selected(self, id: int, score: float) -> SelectedExample:
        ex = self.index.example(id)
        names = self.label_names
        return SelectedExample(id=id, fields=dict(zip(self.text_fields, ex.texts)), label=ex.label,
                               label_name=names[ex.label] if names and ex.label < len(names) else None, score=score)

    def add_examples(self, rows: Sequence[Mapping[str, Any]], save: bool = False) -> list[int]:
        """Add {"fields": {name: text} or a string, "label": id or name} rows (and save, atomically); returns ids.
        Nothing is added when the save fails."""
        if isinstance(rows, (str, Mapping)) or not rows:
            raise RiclError("add_examples expects a non-empty list of {'fields': ..., 'label': ...} dicts")
        if save and self.directory is None:
            raise RiclError("save=True needs an index directory; load with DemoSelector.load(directory)")
        with self._write_lock:  # selects go on meanwhile, on the pool and fits as they were
            parsed = [self._parse_row(row, n) for n, row in enumerate(rows)]
            with self._lock:  # the encoder is shared with selects
                vectors = self.index.loaded_encoder().encode(["\n".join(texts) for texts, _ in parsed])
                current = dict(self._fitted)
            start = int(self.index.ids.max()) + 1 if len(self.index) else 0
            examples = [Example(start + n, texts, label) for n, (texts, label) in enumerate(parsed)]
            # Added to a copy, saved, and only then served: a failed save (disk full) leaves memory as on disk,
            # so a client's retry does not duplicate examples that were never stored.
            staged = self.index.copy()
            staged.add(examples, embeddings=vectors)
            if save:
                staged.save(self.directory)
            # BM25, balanced and representative selectors hold state computed from the pool: refitted here, their
            # per-k state (kmeans, votek) in the background or on first use.
            fitted = {name: self._new_selector(name, staged) for name in current}
            with self._lock:
                self.index, self._fitted = staged, fitted
            for name, old in current.items():
                for k in old.prepared_ks() if self.background_fits else ():
                    self.fit_later(name, k)
            return [ex.id for ex in examples]

    def _parse_row(self, row: Mapping[str, Any], n: int) -> tuple[tuple[str, ...], int]:
        if not isinstance(row, Mapping) or set(row) != {"fields", "label"}:
            raise RiclError(f"example {n}: expected a dict with keys 'fields' and 'label', got {row!r:.200}")
        fields = row["fields"]
        if isinstance(fields, str) and len(self.text_fields) == 1:
            fields = {self.text_fields[0]: fields}
        if not isinstance(fields, Mapping):
            raise RiclError(f"example {n}: fields must be a dict of {self.text_fields} (or a string for one field)")
        texts = tuple(_checked_text(t, f"example {n} field {f!r}") for f, t in self._fields_in_order(fields).items())
        return texts, self._label_id(row["label"], n)

    def _label_id(self, raw: Any, n: int) -> int:
        """A row's label id: one of the label names or ids, or without names at most one past the largest id in
        the index (a new label, one at a time: an id like 10**12 would size every per-label array)."""
        names = self.label_names
        if isinstance(raw, str) and names and raw in names:
            return names.index(raw)
        limit = len(names) if names else max((ex.label for ex in self.index.examples), default=-1) + 2
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < limit:
            expected = f"an id 0..{limit - 1} or one of {names}" if names else f"an integer id 0..{limit - 1}"
            raise RiclError(f"example {n}: label {raw!r} is not {expected}")
        return raw

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the index atomically to `directory` (default: where it was loaded from); returns the path."""
        target = directory if directory is not None else self.directory
        if target is None:
            raise RiclError("this DemoSelector was not loaded from a directory; pass save(directory)")
        with self._lock:
            return self.index.save(target)


def _check_known(strategy: str) -> None:
    if strategy not in SELECTORS:
        raise RiclError(f"unknown strategy {strategy!r}; known: {sorted(SELECTORS)}")


def _yielding_thread() -> None:
    """Give the calling (background fit) thread the lowest CPU priority, so request threads go first: Linux applies a
    thread id's nice value to that thread alone, and the threads it starts (OpenMP, BLAS) inherit it."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: the fit runs at normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _checked_text(text: Any, what: str) -> str:
    """The text stripped like pool texts, non-empty, UTF-8-encodable (JSON allows lone surrogates; the encoder not)."""
    if not isinstance(text, str):
        raise RiclError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RiclError(f"{what} is empty; expected non-empty text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RiclError(f"{what} is not valid Unicode text ({e.reason} at position {e.start})") from None
    return text.strip()
