"""Near-duplicates of a query in a demonstration pool, so no demonstration is a phrase of the query (issue 20).

SST-2's GLUE train split is parse-tree phrases: nearly every train phrase has a sub- or super-phrase elsewhere in
train, while real validation sentences rarely share more than a word or two with one. A query drawn from such a pool
would see neighbours that real queries never see. The rule: a pool text is a near-duplicate of the query when,
normalised (`normalise`), one contains the other on word boundaries (equal texts included), or they share more than
half of the shorter one's distinct word trigrams. `is_near_duplicate` applies it to one pair; `NearDuplicates`
answers it for a whole pool.

`NearDuplicates.rows` finds, without comparing the query with every row:
- rows equal to the query or to one of its 1-2 word sub-sequences (a dict of normalised text -> rows);
- rows sharing trigrams with the query (sorted trigram postings, one `np.searchsorted` range per query trigram):
  this also finds every row of 3+ words inside the query, and every row holding a query of 3+ words, since those
  share all of the shorter text's trigrams;
- for a query of 1-2 words, the rows holding all its words (word postings, rarest first) that hold it contiguously.

Measured by benchmarks/bench_near_duplicates.py (2 shared vCPUs, Python 3.11, load ~2): SST-2 train (67,349
phrases): build 0.5 s (62 MB peak RSS added), then 0.1 ms per query (a brute-force scan of the pre-normalised rows:
100 ms, same rows); AG News 120,000 texts (the 10,001 local train texts plus word-shuffled copies): build 4.1 s
(364 MB peak), 0.2 ms per query. Of 200 SST-2 train phrases of 4+ words, 200 have a near-duplicate elsewhere in
train (80% of the pairs with the query's label); of 100 real validation sentences, 96 do, but 83 of those only
through a train phrase of 1-2 words inside the sentence (a word such as "entertaining" is its own train phrase).
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

_ENTITY = re.compile(r"&?#(\d{1,6});")  # AG News writes an apostrophe as "#39;": decode it like the plain character
_PTB_BRACKET = re.compile(r"-[lr][rsc]b-")  # -lrb- / -rrb- ...: brackets as the PTB tokeniser writes them
_NT = re.compile(r"(?<=\w)n['\u2019]t\b")  # "don't" -> "do n't", as SST-2's tokeniser splits it
_NOT_ALNUM = re.compile(r"[\W_]+")  # anything but a letter or digit (unicode ones included) separates words


def normalise(text: str) -> str:
    """Lowercased letters and digits, every other character a word break, words one space apart."""
    text = _ENTITY.sub(_entity_char, text).lower()
    text = _NT.sub(" n't", _PTB_BRACKET.sub(" ", text))
    return " ".join(_NOT_ALNUM.sub(" ", text).split())


def _entity_char(match: re.Match) -> str:
    code = int(match.group(1))
    return chr(code) if code < 0x110000 else " "


def _trigrams(words: Sequence[str]) -> set[tuple[str, str, str]]:
    """The distinct word trigrams of a word sequence."""
    return set(zip(words, words[1:], words[2:]))


def shares_most(shared: np.ndarray | int, n_a: np.ndarray | int, n_b: np.ndarray | int) -> np.ndarray | bool:
    """Whether `shared` trigrams are more than half of the shorter text's (n_a, n_b distinct trigrams each)."""
    return 2 * shared > np.minimum(n_a, n_b)  # a text with no trigram (under 3 words) never passes


def is_near_duplicate(a: str, b: str) -> bool:
    """Whether two texts are near-duplicates: normalised, one holds the other on word boundaries, or they share more
    than half of the shorter text's distinct word trigrams."""
    na, nb = normalise(a), normalise(b)
    if na == nb:
        return True
    if not na or not nb:  # an empty text (punctuation only) is contained in nothing
        return False
    if f" {na} " in f" {nb} " or f" {nb} " in f" {na} ":
        return True
    ta, tb = _trigrams(na.split()), _trigrams(nb.split())
    return bool(shares_most(len(ta & tb), len(ta), len(tb)))


@dataclass
class _Tables:
    """The lookup tables over a pool of n texts; word ids are positions of first occurrence, so below n_tokens."""

    norm: list[str]  # (n,) normalised texts
    by_norm: dict[str, list[int]]  # normalised text -> its rows
    word_id: dict[str, int]  # word -> id
    n_ids: int  # an upper bound on word and pair ids, the radix of the packed keys
    word_keys: np.ndarray  # (P1,) int64 word ids, sorted; each (word, row) once
    word_rows: np.ndarray  # (P1,) int32 rows, ascending within a word
    pair_keys: np.ndarray  # (B,) int64 sorted distinct first*n_ids+second of every trigram's first two words
    tri_keys: np.ndarray  # (P3,) int64 pair_index*n_ids+third, sorted; each (trigram, row) once
    tri_rows: np.ndarray  # (P3,) int32 rows
    n_trigrams: np.ndarray  # (n,) distinct trigrams per row


def _build(texts: Sequence[str]) -> _Tables:
    """Normalise every text and index its words and trigrams (numpy throughout but the word dict)."""
    norm = [normalise(t) for t in texts]
    by_norm: dict[str, list[int]] = {}
    for row, text in enumerate(norm):
        by_norm.setdefault(text, []).append(row)
    lengths = np.fromiter((t.count(" ") + 1 if t else 0 for t in norm), dtype=np.int64, count=len(norm))  # (n,)
    n_tokens = int(lengths.sum())
    word_id: dict[str, int] = {}
    words = itertools.chain.from_iterable(t.split() for t in norm)  # streamed: a pool's tokens never all live at once
    ids = np.fromiter(map(word_id.setdefault, words, itertools.count()), dtype=np.int64, count=n_tokens)  # (T,)
    n_ids = max(n_tokens, 1)  # ids are first-occurrence positions, so below the token count
    row_of = np.repeat(np.arange(len(norm), dtype=np.int32), lengths)  # (T,)
    word_keys, word_rows = _distinct_postings(ids, row_of)
    pair_keys, tri_keys, tri_rows = _trigram_postings(ids, row_of, lengths, n_ids)
    n_trigrams = np.bincount(tri_rows, minlength=len(norm))
    return _Tables(norm, by_norm, word_id, n_ids, word_keys, word_rows, pair_keys, tri_keys, tri_rows, n_trigrams)


def _trigram_postings(ids: np.ndarray, row_of: np.ndarray, lengths: np.ndarray,
                      n_ids: int) -> tuple[np.ndarray, ...]:
    """(pair_keys, tri_keys, tri_rows) from the pool's word ids (T,), their rows (T,) and the row lengths (n,)."""
    row_end = np.repeat(np.cumsum(lengths), lengths)  # (T,) the end of each token's row in the token sequence
    start = np.flatnonzero(np.arange(len(ids)) + 2 < row_end)  # (G,) tokens that begin a trigram
    del row_end
    pair_keys, pair_index = np.unique(ids[start] * n_ids + ids[start + 1], return_inverse=True)
    tri = pair_index.astype(np.int64) * n_ids + ids[start + 2]  # exact: pair index and word id are both < n_ids
    tri_keys, tri_rows = _distinct_postings(tri, row_of[start])
    return pair_keys, tri_keys, tri_rows


def _distinct_postings(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """keys (m,) and their rows (m,), rows ascending, as postings sorted by key, each (key, row) pair once."""
    order = np.argsort(keys, kind="stable")  # stable: rows stay ascending within a key
    keys, rows = keys[order], rows[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]) | (rows[1:] != rows[:-1])
    return keys[first], rows[first].astype(np.int32)


def _gather(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """values[lo[0]:hi[0]], values[lo[1]:hi[1]], ... concatenated, without a Python loop."""
    lengths = hi - lo
    offsets = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
    return values[offsets + np.arange(int(lengths.sum()))]


class NearDuplicates:
    """Every near-duplicate (`is_near_duplicate`) of a query text among a fixed pool's texts, by row.

    The tables are built on the first `rows` (or an explicit `build`), once, under a lock, so threads may share it.

    >>> pool = NearDuplicates(["a good movie", "A GOOD movie!", "good", "goo", "a bad day"])
    >>> pool.rows("a good movie")
    [0, 1, 2]
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts
        self._tables: _Tables | None = None
        self._lock = threading.Lock()
        self._cached = lru_cache(maxsize=256)(self._find)  # a select asks twice per query: its check, then its choice

    def __len__(self) -> int:
        return len(self.texts)

    def __getstate__(self) -> dict:
        """Texts and tables only: a lock and a cache do not pickle (a fitted selector may be copied or sent)."""
        return {"texts": self.texts, "tables": self._tables}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["texts"])
        self._tables = state["tables"]

    @property
    def built(self) -> bool:
        """Whether the lookup tables exist yet."""
        return self._tables is not None

    def build(self) -> "NearDuplicates":
        """Build the lookup tables now instead of on the first `rows`; returns self."""
        self._built()
        return self

    def rows(self, text: str) -> list[int]:
        """The pool rows that are near-duplicates of `text`, ascending."""
        return list(self._cached(text))

    def holders(self, text: str) -> list[int]:
        """The rows among `rows(text)` whose normalised text is longer and holds the query's: it is their phrase."""
        norm, t = normalise(text), self._built()
        return [r for r in self.rows(text) if t.norm[r] != norm and f" {norm} " in f" {t.norm[r]} "]

    def _built(self) -> _Tables:
        if self._tables is None:
            with self._lock:
                if self._tables is None:  # another thread may have built it while this one waited
                    self._tables = _build(self.texts)
        return self._tables

    def _find(self, text: str) -> tuple[int, ...]:
        t, norm = self._built(), normalise(text)
        words = norm.split()
        found = [np.asarray(t.by_norm.get(norm, ()), dtype=np.int64)]  # equal normalised texts, the empty one too
        found += [np.asarray(t.by_norm.get(" ".join(words[i:i + size]), ()), dtype=np.int64)
                  for size in (1, 2) for i in range(len(words) - size + 1)]  # short rows inside the query
        ids = np.asarray([t.word_id.get(w, -1) for w in words], dtype=np.int64)  # (m,) -1: a word no row has
        if len(words) >= 3:
            found.append(self._sharing_trigrams(t, ids, len(_trigrams(words))))
        elif words and (ids >= 0).all():
            found.append(self._holding(t, ids, norm))
        return tuple(int(r) for r in np.unique(np.concatenate(found)))

    @staticmethod
    def _sharing_trigrams(t: _Tables, ids: np.ndarray, n_query: int) -> np.ndarray:
        """Rows sharing more than half of the shorter text's trigrams with a query of word ids (m,), m >= 3, that has
        n_query distinct trigrams."""
        known = (ids[:-2] >= 0) & (ids[1:-1] >= 0) & (ids[2:] >= 0)  # (m-2,) trigrams whose words the pool has
        pairs = ids[:-2][known] * t.n_ids + ids[1:-1][known]
        at = np.searchsorted(t.pair_keys, pairs)
        seen = at < len(t.pair_keys)
        seen[seen] = t.pair_keys[at[seen]] == pairs[seen]
        keys = np.unique(at[seen] * t.n_ids + ids[2:][known][seen])  # distinct query trigrams the pool has
        lo, hi = np.searchsorted(t.tri_keys, keys, "left"), np.searchsorted(t.tri_keys, keys, "right")
        rows, shared = np.unique(_gather(t.tri_rows, lo, hi), return_counts=True)
        return rows[shares_most(shared, n_query, t.n_trigrams[rows])]

    @staticmethod
    def _holding(t: _Tables, ids: np.ndarray, norm: str) -> np.ndarray:
        """Rows holding a query of 1-2 words (ids (m,), all known) on word boundaries."""
        lo, hi = np.searchsorted(t.word_keys, ids, "left"), np.searchsorted(t.word_keys, ids, "right")
        postings = sorted((t.word_rows[a:b] for a, b in zip(lo, hi)), key=len)  # rarest first
        rows = postings[0]
        for other in postings[1:]:
            rows = np.intersect1d(rows, other, assume_unique=True)
        if len(ids) == 1:
            return rows.astype(np.int64)
        needle = f" {norm} "
        return np.asarray([r for r in rows if needle in f" {t.norm[r]} "], dtype=np.int64)  # the words in a row
