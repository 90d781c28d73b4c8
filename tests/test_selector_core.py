"""Selector core on the tiny SST-2 data: knn, random and band, the checks `Selector` does for every strategy, and the
array steps (nearest, best_first, first_kept, cosines, mmr_order) against brute-force numpy."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from retrieval_icl.encoders import Encoder
from retrieval_icl.errors import RiclError
from retrieval_icl.index import DemoIndex
from retrieval_icl.selectors import (
    SELECTORS,
    KNNSelector,
    RandomSelector,
    SimilarityBandSelector,
    best_first,
    cosines,
    first_kept,
    make_selector,
    mmr_order,
    nearest,
)
from retrieval_icl.selectors.checks import (
    check_count,
    check_fraction,
    check_greater,
    check_in_range,
    check_order,
    check_positive_int,
)
from retrieval_icl.tasks import Example, load_examples, load_task

DATA = Path(__file__).resolve().parent / "data"
FITS_STATE = {"adaptive", "balanced", "bm25", "kmeans", "votek"}  # fit computes state from the pool
# Parameters that make every selector give exactly k: adaptive with a threshold no confidence reaches shows all k.
EXACT_K = {"kmeans": {"budget": 20}, "votek": {"budget": 20}, "adaptive": {"thresholds": {1: 1.0}}}


def uniform_lm(texts, demo_ids) -> np.ndarray:
    """mdl's language model in tests of every selector: no preference, so mdl keeps knn's selection."""
    return np.full((len(texts), 2), 0.5)


def fitted(name: str, index: DemoIndex, **params):
    """A registered selector fitted on `index`, given a language model where it needs one (mdl)."""
    selector = make_selector(name, **(EXACT_K.get(name, {}) | params)).fit(index)
    return selector.use_lm(uniform_lm) if name == "mdl" else selector


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return Encoder(cache_dir=tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="module")
def pool_and_queries(encoder):
    """The 40 SST-2 train lines as the pool, the 8 validation lines as queries."""
    task = load_task("sst2")
    pool, queries = load_examples(task, "train", DATA), load_examples(task, "validation", DATA)
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
    for f, la, s in zip(first, last, shuffled):
        assert f.scores == sorted(f.scores, reverse=True)
        assert la.demo_ids == f.demo_ids[::-1] and la.scores[-1] == max(la.scores)
        assert sorted(s.demo_ids) == sorted(f.demo_ids)
    assert any(s.demo_ids != f.demo_ids and s.demo_ids != f.demo_ids[::-1] for f, s in zip(first, shuffled))


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_query_in_pool_is_never_selected(pool_and_queries, name):
    index, pool, _ = pool_and_queries
    queries = pool[:10]
    for q, sel in zip(queries, fitted(name, index).select(queries, 6)):
        assert len(sel.demo_ids) == 6 == len(set(sel.demo_ids)) and q.id not in sel.demo_ids
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
    knn = KNNSelector().fit(index).select(queries, 2)  # 2 of 40: the nearest few percent, as 8 of 300
    rnd = RandomSelector().fit(index).select(queries, 2)
    assert np.mean([np.mean(s.scores) for s in knn]) > np.mean([np.mean(s.scores) for s in rnd]) + 0.2


def test_bad_requests_are_refused(pool_and_queries):
    index, _, queries = pool_and_queries
    with pytest.raises(RiclError, match="larger than the pool"):
        KNNSelector().fit(index).select(queries[:1], 41)
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
    with pytest.raises(RiclError, match="2 embeddings for 1 query texts"):
        KNNSelector().fit(index).select_embedded(["a film"], np.zeros((2, 384), np.float32), 2)


def test_k_equal_to_pool_minus_query_works_and_one_more_fails(encoder):
    pool = [Example(i, (t,), i % 2) for i, t in enumerate(["good", "bad", "fine", "awful"])]
    index = DemoIndex(encoder).build(pool)
    sel = KNNSelector().fit(index).select(["good"], 3)[0]
    assert sorted(sel.demo_ids) == [1, 2, 3]
    with pytest.raises(RiclError, match="without the query"):
        KNNSelector().fit(index).select(["good"], 4)
    with pytest.raises(RiclError, match="without the query"):
        RandomSelector().fit(index).select(["good"], 4)


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


# The checks every selector gets from the base class


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_k_larger_than_the_pool_without_the_query_has_one_message(pool_and_queries, encoder, name):
    _, pool, _ = pool_and_queries
    copy = Example(100, pool[0].texts, 1)  # a second example with the query's text
    selector = fitted(name, DemoIndex(encoder).build(pool[:12] + [copy]))
    with pytest.raises(RiclError, match=re.escape("k=12 is larger than the pool without the query (11 examples)")):
        selector.select([pool[0].text], 12)
    with pytest.raises(RiclError, match=re.escape("k=14 is larger than the pool without the query (13 examples)")):
        selector.select(["an unseen query"], 14)
    chosen = selector.select([pool[0].text], 11)[0].demo_ids  # exactly the pool without the query: all of it
    assert sorted(chosen) == [ex.id for ex in pool[1:12]]


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_a_grown_pool_needs_a_new_fit_where_fit_computed_state(pool_and_queries, encoder, name):
    _, pool, _ = pool_and_queries
    index = DemoIndex(encoder).build(pool[:12])
    selector = fitted(name, index)
    index.add([pool[12]])
    assert SELECTORS[name].fits_state == (name in FITS_STATE)
    if name in FITS_STATE:
        message = rf"the index has 13 examples but {name} was fitted on 12; call fit\(index\) again"
        with pytest.raises(RiclError, match=message):
            selector.select(["an unseen query"], 2)
        selector.fit(index)
    chosen = selector.select(["an unseen query"], 13)[0].demo_ids  # the grown pool, all of it
    assert sorted(chosen) == [ex.id for ex in pool[:13]]


@pytest.mark.parametrize("check,args,message", [
    (check_positive_int, ("n", 0), "n must be a positive integer, got 0"),
    (check_positive_int, ("n", True), "n must be a positive integer, got True"),
    (check_positive_int, ("n", 2.0), "n must be a positive integer, got 2.0"),
    (check_positive_int, ("n", None), "n must be a positive integer, got None"),
    (check_positive_int, ("n", -1, True), "n must be a positive integer or None, got -1"),
    (check_count, ("n", -1), "n must be a non-negative integer, got -1"),
    (check_fraction, ("x", 1.5), r"x must be a number in \[0, 1\], got 1.5"),
    (check_fraction, ("x", "0.5"), r"x must be a number in \[0, 1\], got '0.5'"),
    (check_in_range, ("x", -1, 0, math.inf), r"x must be a number in \[0, inf\], got -1"),
    (check_greater, ("rho", 1, 1), "rho must be a number greater than 1, got 1"),
    (check_order, ("up",), r"unknown order 'up'; expected one of \('nearest_last', 'nearest_first', 'random'\)"),
])
def test_parameter_checks_say_what_was_expected(check, args, message):
    with pytest.raises(RiclError, match=f"^{message}$"):
        check(*args)


def test_parameter_checks_return_valid_values():
    assert check_positive_int("n", 3) == 3 and check_positive_int("n", None, allow_none=True) is None
    assert check_count("n", 0) == 0 and check_fraction("x", 1) == 1 and check_greater("rho", 1.5, 1) == 1.5
    assert check_in_range("x", 0.0, 0, 2) == 0.0 and check_order("random") == "random"


# Array steps against brute force


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """60 seeded unit vectors (d=16), ids 100.., rows 0-14 a tight cluster sharing the text "shared"; 5 queries."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 16))
    x[:15] = x[0] + 0.05 * rng.normal(size=(15, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    texts = ["shared" if r < 15 else f"text {r}" for r in range(60)]
    pool = [Example(100 + r, (t,), r % 2) for r, t in enumerate(texts)]
    queries = np.concatenate([x[:1] + 0.01, rng.normal(size=(4, 16))]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = DemoIndex(Encoder(cache_dir=tmp_path_factory.mktemp("unused")))  # never loaded: vectors are given
    return index.build(pool, embeddings=x), x, np.array(texts, dtype=object), queries


def brute_nearest(x, texts, queries, exclude, k):
    """Ids (n, k) and scores (n, k) by sorting every cosine, padded with -1 / -inf."""
    ids, scores = np.full((len(queries), k), -1), np.full((len(queries), k), -np.inf)
    for q, (vector, skip) in enumerate(zip(queries, exclude)):
        sims = x @ vector
        rows = [r for r in np.argsort(-sims, kind="stable") if texts[r] != skip][:k]
        ids[q, :len(rows)], scores[q, :len(rows)] = 100 + np.array(rows, dtype=int), sims[rows]
    return ids, scores


@pytest.mark.parametrize("k", [1, 5, 20, 45, 60, 70])
def test_nearest_equals_brute_force(synthetic, k):
    index, x, texts, queries = synthetic
    for exclude in (["shared", "text 20", "shared", "nothing", "text 59"], [None] * 5):
        skip = [{100 + r for r, t in enumerate(texts) if t == text} for text in exclude]
        ids, scores = nearest(index, queries, k, skip if exclude[0] else None)
        expected_ids, expected_scores = brute_nearest(x, texts, queries, exclude, k)
        assert ids.shape == scores.shape == (5, k) and ids.dtype == np.int64 and scores.dtype == np.float32
        np.testing.assert_array_equal(ids, expected_ids)  # the query near the shared cluster searches deeper
        np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    assert nearest(index, queries[:0], k)[0].shape == (0, k)


def test_select_embedded_is_nearest_arranged(synthetic):
    index, _, pool_texts, queries = synthetic
    texts = ["shared", "text 20", "shared", "nothing", "text 59"]
    ids, scores = nearest(index, queries, 4, [{100 + r for r, x in enumerate(pool_texts) if x == t} for t in texts])
    chosen = KNNSelector().fit(index).select_embedded(texts, queries, 4)
    assert [s.demo_ids for s in chosen] == [row[::-1].tolist() for row in ids]
    assert [s.scores for s in chosen] == [row[::-1].tolist() for row in scores]


def test_best_first_first_kept_and_cosines_equal_brute_force(synthetic):
    index, x, texts, queries = synthetic
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=30).astype(np.float32)  # many ties: position order breaks them
    keep = rng.random(30) < 0.6
    assert best_first(scores).tolist() == sorted(range(30), key=lambda r: (-scores[r], r))
    assert best_first(scores, keep).tolist() == sorted(np.flatnonzero(keep), key=lambda r: (-scores[r], r))
    rows = rng.permutation(60)
    assert first_kept(rows, texts != "shared", 10) == [r for r in rows if texts[r] != "shared"][:10]
    assert first_kept(rows[:5], texts != "text 3", 10) == [r for r in rows[:5] if texts[r] != "text 3"]
    np.testing.assert_allclose(cosines(index, [117, 100, 159], queries[1]), x[[17, 0, 59]] @ queries[1], atol=1e-6)


def brute_mmr(relevance, similarity, k, lambda_mult):
    """MMR by its definition: after the most relevant, the candidate of largest gain over the chosen set."""
    chosen = [int(np.argmax(relevance))]
    while len(chosen) < min(k, len(relevance)):
        gains = {i: lambda_mult * relevance[i] - (1 - lambda_mult) * max(similarity[j, i] for j in chosen)
                 for i in range(len(relevance)) if i not in chosen}
        chosen.append(max(gains, key=lambda i: (gains[i], -i)))
    return chosen


@pytest.mark.parametrize("lambda_mult", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_mmr_order_equals_brute_force(synthetic, lambda_mult):
    _, x, _, queries = synthetic
    relevance = (x @ queries[1]).astype(np.float64)  # (60,)
    similarity = x @ x.T  # (60, 60)
    for k in (1, 7, 60, 80):
        assert mmr_order(relevance, similarity, k, lambda_mult) == brute_mmr(relevance, similarity, k, lambda_mult)


def test_a_query_never_gets_an_example_sharing_one_of_its_fields(tmp_path):
    """MNLI's local pool is its query split: a premise's sibling hypotheses must not be shown with it."""
    premises = ["A man plays a guitar.", "Two dogs run in a park.", "A chef tastes the soup."]
    pool = [Example(10 * p + h, (premise, f"hypothesis {p}-{h}"), h) for p, premise in enumerate(premises)
            for h in range(3)]
    x = np.eye(9, 12, dtype=np.float32)
    x[:3] += 0.5  # the first premise's siblings are the nearest to a query along the shared direction
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = DemoIndex(Encoder(cache_dir=tmp_path)).build(pool, embeddings=x)
    query = "\n".join(pool[0].texts)  # the pool example itself, as a query: its premise and hypothesis
    emb = (x[0] + x[1]) / np.linalg.norm(x[0] + x[1])
    siblings = {0, 1, 2}
    for name in sorted(SELECTORS):
        chosen = fitted(name, index).select_embedded([query], emb[None], 4)[0]
        assert not siblings & set(chosen.demo_ids), name
    fresh = "\n".join(["A woman reads a book.", "hypothesis 0-1"])  # shares only the hypothesis of id 1
    chosen = make_selector("knn").fit(index).select_embedded([fresh], emb[None], 8)[0]
    assert 1 not in chosen.demo_ids and len(chosen.demo_ids) == 8
    with pytest.raises(RiclError, match="k=7 is larger than the pool without the query \\(6 examples"):
        make_selector("knn").fit(index).select_embedded([query], emb[None], 7)
