"""BM25 (Robertson & Zaragoza 2009) lexical retrieval with the bm25s library, nearest neighbours filling up."""

from __future__ import annotations

import logging

import numpy as np

from .arrays import best_first, cosines, nearest
from .base import Ranking, Selector
from .checks import check_in_range, check_order


class BM25Selector(Selector):
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
    fits_state = True

    def __init__(self, k1: float = 1.5, b: float = 0.75, order: str = "nearest_last", seed: int = 0):
        self.order, self.seed = check_order(order), seed
        self.k1 = float(check_in_range("k1", k1, 0, float("inf")))
        self.b = float(check_in_range("b", b, 0, 1.0))

    def fit(self, index) -> "BM25Selector":
        """Tokenize the pool and build the BM25 index; returns self."""
        import bm25s
        from bm25s.tokenization import Tokenizer

        quiet_bm25s_logger()
        super().fit(index)
        self.tokenizer_ = Tokenizer(stopwords="en")
        corpus = self.tokenizer_.tokenize(self.pool_.texts.tolist(), update_vocab=True, return_as="tuple",
                                          show_progress=False)
        self.bm25_ = bm25s.BM25(k1=self.k1, b=self.b)
        self.bm25_.index(corpus, show_progress=False)
        # The tokenizer maps unknown query words to the id of "" (the token of empty documents): drop it.
        self.empty_token_ = corpus.vocab.get("")
        return self

    def bm25_scores(self, text: str) -> np.ndarray:
        """BM25 score of every pool example (FAISS row order) for one query text, float32 (n,)."""
        self._fitted_index()
        token_ids = self.tokenizer_.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)[0]
        token_ids = [t for t in token_ids if t != self.empty_token_]
        if not token_ids:
            return np.zeros(len(self.pool_), dtype=np.float32)
        return np.asarray(self.bm25_.get_scores_from_ids(token_ids), dtype=np.float32)

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        return [self._one(text, emb, k) for text, emb in zip(texts, embeddings)]

    def _one(self, text: str, emb: np.ndarray, k: int) -> Ranking:
        pool, scores = self.pool_, self.bm25_scores(text)
        ids = [int(pool.ids[r]) for r in best_first(scores, (scores > 0) & pool.keep(text))[:k]]
        if len(ids) < k:  # too few lexical matches: the nearest neighbours not yet chosen fill up
            taken = set(ids)  # k distinct neighbours minus at most len(ids) already taken leave enough
            neighbours = nearest(self.index_, emb[None], k, [pool.excluded_ids(text)])[0][0]  # (k,) padded with -1
            ids += [int(i) for i in neighbours if i >= 0 and int(i) not in taken][:k - len(ids)]
        return ids, [float(s) for s in cosines(self.index_, ids, emb)]


def quiet_bm25s_logger() -> None:
    """bm25s sets its logger to DEBUG on import (a line per fit); defer to the application's logging instead."""
    logger = logging.getLogger("bm25s")
    if logger.level == logging.DEBUG:
        logger.setLevel(logging.NOTSET)
