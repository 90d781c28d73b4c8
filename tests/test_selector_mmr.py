"""mmr (maximal marginal relevance): lambda 1 is knn, lambda 0 picks one per topic, the query excluded from a
small pool. mmr_order itself is tested in test_selector_arrays.py."""

import numpy as np
import pytest

from retrieval_icl.errors import RiclError
from retrieval_icl.selectors.knn import KNNSelector
from retrieval_icl.selectors.mmr import MMRSelector


def test_mmr_with_lambda_one_equals_knn(sst2):
    index, queries = sst2
    for order in ("nearest_last", "nearest_first"):
        knn = KNNSelector(order=order).fit(index).select(queries, 6)
        mmr = MMRSelector(lambda_mult=1.0, fetch_k=30, order=order).fit(index).select(queries, 6)
        assert [s.demo_ids for s in mmr] == [s.demo_ids for s in knn]
        np.testing.assert_allclose([s.scores for s in mmr], [s.scores for s in knn], atol=1e-6)


def test_mmr_with_lambda_zero_picks_one_per_topic(topics):
    index, topic_of = topics
    chosen = MMRSelector(lambda_mult=0.0, fetch_k=9, order="nearest_first").fit(index).select(["cat on a mat"], 3)[0]
    nearest = KNNSelector(order="nearest_first").fit(index).select(["cat on a mat"], 3)[0]
    assert {topic_of[i] for i in nearest.demo_ids} == {"cats"}
    assert chosen.demo_ids[0] == nearest.demo_ids[0]  # the first pick is the most relevant
    assert sorted(topic_of[i] for i in chosen.demo_ids) == ["cats", "football", "markets"]
    q = index.encoder.encode(["cat on a mat"])[0]
    np.testing.assert_allclose(chosen.scores, index.embeddings(chosen.demo_ids) @ q, atol=1e-5)
    assert chosen.scores == sorted(chosen.scores, reverse=True)


def test_mmr_small_pool_without_the_query(topics):
    index, _ = topics
    chosen = MMRSelector(fetch_k=50).fit(index).select(["the cat sat on the mat"], 8)[0]
    assert len(set(chosen.demo_ids)) == 8 and 0 not in chosen.demo_ids
    with pytest.raises(RiclError, match="without the query"):
        MMRSelector().fit(index).select(["the cat sat on the mat"], 9)
