"""The array steps selectors compose (selectors/arrays.py: nearest, best_first, first_kept, cosines, mmr_order)
against brute-force numpy on seeded synthetic unit vectors, with ties, k larger than the pool, and excluded texts."""

import numpy as np
import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.arrays import best_first, cosines, first_kept, mmr_order, nearest
from retrieval_icl.selectors.knn import KNNSelector


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


def test_mmr_order_known_answer():
    relevance = np.array([1.0, 0.9, 0.5])
    similarity = np.array([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])  # 0 and 1 are near copies
    assert mmr_order(relevance, similarity, 2, lambda_mult=1.0) == [0, 1]
    assert mmr_order(relevance, similarity, 2, lambda_mult=0.5) == [0, 2]  # 0.25 - 0 beats 0.45 - 0.495
    assert mmr_order(relevance, similarity, 3, lambda_mult=0.0) == [0, 2, 1]


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
