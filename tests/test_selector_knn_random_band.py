"""knn (KATE), random and band on the tiny SST-2 data: against a brute-force cosine ranking, the three orders,
seeding per query, cosines as scores."""

import numpy as np
import pytest

from retrieval_icl.errors import RiclError
from retrieval_icl.selectors.band import SimilarityBandSelector
from retrieval_icl.selectors.knn import KNNSelector
from retrieval_icl.selectors.random import RandomSelector


def brute_force(index, pool, texts, k):
    q = index.encoder.encode(texts)
    x = index.encoder.encode([e.text for e in pool])
    sims = q @ x.T  # (queries, pool)
    return sims, np.argsort(-sims, axis=1)[:, :k]


def test_knn_equals_numpy_brute_force_top_k(pool_and_queries):
    index, pool, queries = pool_and_queries
    sims, top = brute_force(index, pool, [q.text for q in queries], 8)
    chosen = KNNSelector(order="nearest_first").fit(index).select(queries, 8)
    for row, sel in enumerate(chosen):
        expected = sims[row, top[row]]
        np.testing.assert_allclose(sel.scores, expected, atol=1e-5)  # same scores, ties allowed
        assert set(sel.demo_ids) == {pool[j].id for j in top[row]} or np.ptp(expected) < 1e-5


def test_knn_orders(pool_and_queries):
    index, _, queries = pool_and_queries
    first = KNNSelector(order="nearest_first").fit(index).select(queries[:3], 5)
    last = KNNSelector().fit(index).select(queries[:3], 5)
    shuffled = KNNSelector(order="random", seed=1).fit(index).select(queries[:3], 5)
    for f, la, s in zip(first, last, shuffled):
        assert f.scores == sorted(f.scores, reverse=True)
        assert la.demo_ids == f.demo_ids[::-1] and la.scores[-1] == max(la.scores)
        assert sorted(s.demo_ids) == sorted(f.demo_ids)
    assert any(s.demo_ids != f.demo_ids and s.demo_ids != f.demo_ids[::-1] for f, s in zip(first, shuffled))


def test_random_is_seeded_per_query_and_scores_are_cosines(pool_and_queries):
    index, _, queries = pool_and_queries
    a = RandomSelector(seed=0).fit(index).select(queries, 8)
    b = RandomSelector(seed=0).fit(index).select(queries[::-1], 8)[::-1]
    c = RandomSelector(seed=1).fit(index).select(queries, 8)
    assert [s.demo_ids for s in a] == [s.demo_ids for s in b]
    assert [s.demo_ids for s in a] != [s.demo_ids for s in c]
    q = index.encoder.encode([queries[0].text])[0]
    x = index.encoder.encode([index.example(i).text for i in a[0].demo_ids])
    np.testing.assert_allclose(a[0].scores, x @ q, atol=1e-5)
    assert len(set(a[0].demo_ids)) == 8


def test_knn_is_more_similar_than_random(pool_and_queries):
    index, _, queries = pool_and_queries
    knn = KNNSelector().fit(index).select(queries, 2)  # 2 of 40: the nearest few percent, as 8 of 300
    rnd = RandomSelector().fit(index).select(queries, 2)
    assert np.mean([np.mean(s.scores) for s in knn]) > np.mean([np.mean(s.scores) for s in rnd]) + 0.2


def test_band_selector_nearest_middle_and_farthest(pool_and_queries):
    index, pool, queries = pool_and_queries
    sims, order = brute_force(index, pool, [q.text for q in queries[:3]], len(pool))
    nearest_ = SimilarityBandSelector(position=0.0, order="nearest_first").fit(index).select(queries[:3], 5)
    middle = SimilarityBandSelector(position=0.5, order="nearest_first").fit(index).select(queries[:3], 5)
    farthest = SimilarityBandSelector(position=1.0, order="nearest_first").fit(index).select(queries[:3], 5)
    for row in range(3):
        np.testing.assert_allclose(nearest_[row].scores, sims[row, order[row, :5]], atol=1e-5)
        np.testing.assert_allclose(farthest[row].scores, sims[row, order[row, -5:]], atol=1e-5)
        start = round(0.5 * (len(pool) - 5))
        np.testing.assert_allclose(middle[row].scores, sims[row, order[row, start:start + 5]], atol=1e-5)
    with pytest.raises(RiclError, match=r"position must be a number in \[0, 1\] \(0 = nearest, 1 = farthest\)"):
        SimilarityBandSelector(position=1.5)
