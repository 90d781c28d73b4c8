"""bm25: the exact lexical match ranks first, scores are cosines, nearest neighbours fill in where no query word is
in the vocabulary."""

import numpy as np

from retrieval_icl.selectors.bm25 import BM25Selector
from retrieval_icl.selectors.knn import KNNSelector


def test_bm25_ranks_exact_lexical_match_first(sst2):
    index, _ = sst2
    target = index.examples[14]
    rare = max(target.text.split(), key=len)  # a long word of one pool sentence
    query = f"{rare} {rare}"
    selector = BM25Selector(order="nearest_first").fit(index)
    scores = selector.bm25_scores(query)
    top = selector.select([query], 3)[0]
    assert index.example(top.demo_ids[0]).text == index.examples[int(np.argmax(scores))].text
    assert rare.lower() in index.example(top.demo_ids[0]).text.lower()
    q = index.encoder.encode([query])[0]
    np.testing.assert_allclose(top.scores, index.embeddings(top.demo_ids) @ q, atol=1e-5)  # scores are cosines


def test_bm25_exact_word_beats_embedding_neighbour(topics):
    index, topic_of = topics
    top = BM25Selector(order="nearest_first").fit(index).select(["striker"], 1)[0]
    assert index.example(top.demo_ids[0]).text == "the striker scored two goals"
    # no word in the vocabulary (stopwords and unknown words): nearest neighbours fill every slot
    fallback = BM25Selector(order="nearest_first").fit(index).select(["the zzyzx of"], 4)[0]
    knn = KNNSelector(order="nearest_first").fit(index).select(["the zzyzx of"], 4)[0]
    assert fallback.demo_ids == knn.demo_ids
