from pathlib import Path

import numpy as np
import pytest

from retrieval_icl.encoders import Encoder
from retrieval_icl.errors import RiclError
from retrieval_icl.index import DemoIndex
from retrieval_icl.selectors import KNNSelector, RandomSelector, make_selector
from retrieval_icl.tasks import Example, load_examples, load_task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def pool_and_queries(tmp_path_factory):
    task = load_task("sst2")
    val = load_examples(task, "validation", DATA)
    pool, queries = val[:300], val[300:320]
    encoder = Encoder(cache_dir=tmp_path_factory.mktemp("emb"))
    return DemoIndex(encoder).build(pool), pool, queries


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
    for f, l, s in zip(first, last, shuffled):
        assert f.scores == sorted(f.scores, reverse=True)
        assert l.demo_ids == f.demo_ids[::-1] and l.scores[-1] == max(l.scores)
        assert sorted(s.demo_ids) == sorted(f.demo_ids)
    assert any(s.demo_ids != f.demo_ids and s.demo_ids != f.demo_ids[::-1] for f, s in zip(first, shuffled))


def test_query_in_pool_is_never_selected(pool_and_queries):
    index, pool, _ = pool_and_queries
    queries = pool[:10]
    for selector in (KNNSelector(), RandomSelector(seed=3)):
        for q, sel in zip(queries, selector.fit(index).select(queries, 6)):
            assert q.id not in sel.demo_ids
            assert all(index.example(i).text != q.text for i in sel.demo_ids)


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
    knn = KNNSelector().fit(index).select(queries, 8)
    rnd = RandomSelector().fit(index).select(queries, 8)
    assert np.mean([np.mean(s.scores) for s in knn]) > np.mean([np.mean(s.scores) for s in rnd]) + 0.2


def test_bad_requests_are_refused(pool_and_queries):
    index, _, queries = pool_and_queries
    with pytest.raises(RiclError, match="larger than the pool"):
        KNNSelector().fit(index).select(queries[:1], 301)
    with pytest.raises(RiclError, match="k must be a positive integer"):
        RandomSelector().fit(index).select(queries[:1], 0)
    with pytest.raises(RiclError, match="query text is empty"):
        KNNSelector().fit(index).select(["  "], 2)
    with pytest.raises(RiclError, match="not fitted"):
        KNNSelector().select(queries[:1], 2)
    with pytest.raises(RiclError, match=r"unknown selector 'nope'; known: \[.*'knn'.*'random'.*\]"):
        make_selector("nope")
    with pytest.raises(RiclError, match="unknown order"):
        KNNSelector(order="sideways")


def test_k_equal_to_pool_minus_query_works_and_one_more_fails(tmp_path):
    pool = [Example(i, (t,), i % 2) for i, t in enumerate(["good", "bad", "fine", "awful"])]
    index = DemoIndex(Encoder(cache_dir=tmp_path)).build(pool)
    sel = KNNSelector().fit(index).select(["good"], 3)[0]
    assert sorted(sel.demo_ids) == [1, 2, 3]
    with pytest.raises(RiclError, match="without the query"):
        KNNSelector().fit(index).select(["good"], 4)
    with pytest.raises(RiclError, match="without the query"):
        RandomSelector().fit(index).select(["good"], 4)


def test_band_selector_nearest_middle_and_farthest(pool_and_queries):
    from retrieval_icl.selectors import SimilarityBandSelector

    index, pool, queries = pool_and_queries
    sims, order = brute_force(index, pool, [q.text for q in queries[:3]], len(pool))
    nearest = SimilarityBandSelector(position=0.0, order="nearest_first").fit(index).select(queries[:3], 5)
    middle = SimilarityBandSelector(position=0.5, order="nearest_first").fit(index).select(queries[:3], 5)
    farthest = SimilarityBandSelector(position=1.0, order="nearest_first").fit(index).select(queries[:3], 5)
    for row in range(3):
        np.testing.assert_allclose(nearest[row].scores, sims[row, order[row, :5]], atol=1e-5)
        np.testing.assert_allclose(farthest[row].scores, sims[row, order[row, -5:]], atol=1e-5)
        start = round(0.5 * (len(pool) - 5))
        np.testing.assert_allclose(middle[row].scores, sims[row, order[row, start:start + 5]], atol=1e-5)
    with pytest.raises(RiclError, match="position must be in"):
        SimilarityBandSelector(position=1.5)
