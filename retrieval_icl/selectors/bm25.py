"""BM25 (Robertson & Zaragoza 2009) lexical retrieval with the bm25s library, nearest neighbours filling up."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import RiclError
from .base import Selection, order_selection, text_seed
from .knn import KNNSelector


class BM25Selector(KNNSelector):
    """The k pool examples with the highest BM25 score for the query's words.

    Examples sharing no word with the query score 0; when fewer than k score above 0, the nearest neighbours
    by embedding fill the remaining slots. `scores` are cosine similarities to the query, like every selector's,
    so selections are comparable; the BM25 scores only rank. `order` arranges the picks by that ranking
    (best BM25 first, then the fillers by cosine). `fit` tokenizes and indexes the pool (English stopwords
    removed, lower-cased, no stemming); refit after adding examples.

    >>> BM25Selector(k1=1.2).k1
    1.2
    """

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, order: str = "nearest_last", seed: int = 0):
        super().__init__(order=order, seed=seed)
        for field, value, upper in (("k1", k1, None), ("b", b, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (upper and value > upper):
                raise RiclError(f"{field} must be a number in [0, {upper or 'inf'}], got {value!r}")
        self.k1, self.b = float(k1), float(b)

    def fit(self, index) -> "BM25Selector":
        """Tokenize the pool and build the BM25 index; returns self."""
        import bm25s
        from bm25s.tokenization import Tokenizer

        quiet_bm25s_logger()
        super().fit(index)
        self.tokenizer_ = Tokenizer(stopwords="en")
        corpus = self.tokenizer_.tokenize([ex.text for ex in index.examples], update_vocab=True, return_as="tuple",
                                          show_progress=False)
        self.bm25_ = bm25s.BM25(k1=self.k1, b=self.b)
        self.bm25_.index(corpus, show_progress=False)
        # The tokenizer maps unknown query words to the id of "" (the token of empty documents): drop it.
        self.empty_token_ = corpus.vocab.get("")
        self.pool_ids_, self.pool_texts_ = index.ids, [ex.text for ex in index.examples]
        return self

    def bm25_scores(self, text: str) -> np.ndarray:
        """BM25 score of every pool example (FAISS row order) for one query text, float32 (n,)."""
        if not hasattr(self, "bm25_"):
            raise RiclError("BM25Selector is not fitted; call .fit(index) first")
        token_ids = self.tokenizer_.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)[0]
        token_ids = [t for t in token_ids if t != self.empty_token_]
        if not token_ids:
            return np.zeros(len(self.pool_ids_), dtype=np.float32)
        return np.asarray(self.bm25_.get_scores_from_ids(token_ids), dtype=np.float32)

    def _select(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Selection]:
        if len(self.pool_ids_) != len(self.index_):
            raise RiclError(f"the index has {len(self.index_)} examples but BM25 was fitted on "
                            f"{len(self.pool_ids_)}; call fit(index) again after adding examples")
        return [self._one(text, emb, k) for text, emb in zip(texts, embeddings)]

    def _one(self, text: str, emb: np.ndarray, k: int) -> Selection:
        scores = self.bm25_scores(text)
        rows = [r for r in np.argsort(-scores, kind="stable") if scores[r] > 0 and self.pool_texts_[r] != text][:k]
        ids = [int(self.pool_ids_[r]) for r in rows]
        if len(ids) < k:  # too few lexical matches: the nearest neighbours not yet chosen fill up
            nearest = KNNSelector(order="nearest_first").fit(self.index_)._select([text], emb[None], k)[0]
            taken = set(ids)  # k distinct neighbours minus at most len(ids) already taken leave enough
            ids += [i for i in nearest.demo_ids if i not in taken][: k - len(ids)]
        cosines = self.index_.embeddings(ids) @ emb  # (k,)
        return order_selection(ids, [float(s) for s in cosines], self.order, text_seed(self.seed, text))


def quiet_bm25s_logger() -> None:
    """bm25s sets its logger to DEBUG on import (a line per fit); defer to the application's logging instead."""
    logger = logging.getLogger("bm25s")
    if logger.level == logging.DEBUG:
        logger.setLevel(logging.NOTSET)
