"""MMR, BM25, label-balanced, k-means medoids and vote-k: known answers on hand-built pools, brute-force checks."""

from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from retrieval_icl.encoders import Encoder
from retrieval_icl.errors import RiclError
from retrieval_icl.index import DemoIndex
from retrieval_icl.selectors import (
    BalancedSelector,
    BM25Selector,
    KMeansSelector,
    KNNSelector,
    MMRSelector,
    VoteKSelector,
    make_selector,
)
from retrieval_icl.selectors.mmr import mmr_order
from retrieval_icl.tasks import Example, load_examples, load_task

DATA = Path(__file__).resolve().parent / "data"
TOPICS = {
    "cats": ["the cat sat on the mat", "a cat is sitting on a mat", "the kitten slept on the rug"],
    "markets": ["stock markets fell sharply today", "shares dropped as investors panicked",
                "the central bank raised interest rates"],
    "football": ["the football team won the final", "the striker scored two goals", "fans cheered as the match ended"],
}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return Encoder(cache_dir=tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="module")
def topics(encoder):
    """Nine sentences on three topics; label = topic number; topic_of maps id -> topic name."""
    texts = [(topic, t) for topic, ts in TOPICS.items() for t in ts]
    pool = [Example(i, (t,), list(TOPICS).index(topic)) for i, (topic, t) in enumerate(texts)]
    return DemoIndex(encoder).build(pool), {i: topic for i, (topic, _) in enumerate(texts)}


@pytest.fixture(scope="module")
def sst2(encoder):
    """The 40 tiny SST-2 train lines as the pool, the 8 validation lines as queries."""
    task = load_task("sst2")
    return DemoIndex(encoder).build(load_examples(task, "train", DATA)), load_examples(task, "validation", DATA)


def clustered(encoder, sizes, seed=0, spread=0.02):
    """An index over synthetic unit vectors (d=384) in well separated clusters; returns (index, vectors, cluster)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(sizes), 384))
    cluster = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[cluster] / np.linalg.norm(centers[cluster], axis=1, keepdims=True)
    x += spread * rng.normal(size=(len(cluster), 384))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pool = [Example(i, (f"point {i}",), int(c)) for i, c in enumerate(cluster)]
    return DemoIndex(encoder).build(pool, embeddings=x), x.astype(np.float32), cluster


def test_mmr_order_known_answer():
    relevance = np.array([1.0, 0.9, 0.5])
    similarity = np.array([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])  # 0 and 1 are near copies
    assert mmr_order(relevance, similarity, 2, lambda_mult=1.0) == [0, 1]
    assert mmr_order(relevance, similarity, 2, lambda_mult=0.5) == [0, 2]  # 0.25 - 0 beats 0.45 - 0.495
    assert mmr_order(relevance, similarity, 3, lambda_mult=0.0) == [0, 2, 1]


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


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7])
def test_balanced_gives_each_label_floor_or_ceil(k, encoder):
    pool = load_examples(load_task("agnews"), "train_sample", DATA)  # 5 headlines of each of 4 labels
    index = DemoIndex(encoder).build(pool)
    labels = sorted({ex.label for ex in pool})
    for sel in BalancedSelector(base="knn").fit(index).select(["stocks rallied on strong earnings"], k):
        counts = Counter(index.example(i).label for i in sel.demo_ids)
        assert sum(counts.values()) == k and len(set(sel.demo_ids)) == k
        assert all(counts[label] in (k // len(labels), -(-k // len(labels))) for label in labels)


def test_balanced_knn_takes_each_labels_nearest(topics):
    index, _ = topics
    query = "the cat played football"
    chosen = BalancedSelector(order="nearest_first").fit(index).select([query], 3)[0]
    q = index.encoder.encode([query])[0]
    sims = index.embeddings(index.ids) @ q
    expected = {max((i for i in index.ids if index.example(int(i)).label == label), key=lambda i: sims[i])
                for label in range(3)}
    assert set(chosen.demo_ids) == {int(i) for i in expected}
    assert chosen.scores == sorted(chosen.scores, reverse=True)


def test_balanced_moves_slots_from_a_small_label(encoder):
    pool = [Example(i, (t,), 0) for i, t in enumerate(["good", "great", "fine", "nice", "lovely"])]
    pool.append(Example(5, ("awful",), 1))
    index = DemoIndex(encoder).build(pool)
    sel = BalancedSelector().fit(index).select(["a good film"], 4)[0]
    assert Counter(index.example(i).label for i in sel.demo_ids) == {0: 3, 1: 1}
    # the only label-1 example is the query itself: all slots go to label 0
    sel = BalancedSelector().fit(index).select(["awful"], 4)[0]
    assert Counter(index.example(i).label for i in sel.demo_ids) == {0: 4}


def test_balanced_wraps_other_selectors_and_checks_names(topics):
    index, _ = topics
    sel = BalancedSelector(base="mmr", lambda_mult=0.3, fetch_k=3).fit(index).select(["cat"], 6)[0]
    assert Counter(index.example(i).label for i in sel.demo_ids) == {0: 2, 1: 2, 2: 2}
    assert BalancedSelector(base="random").uses_seed and not BalancedSelector(base="knn").uses_seed
    with pytest.raises(RiclError, match=r"unknown selector 'nope'; known: \["):
        BalancedSelector(base="nope")
    with pytest.raises(RiclError, match="selector 'knn'"):
        make_selector("balanced", base="knn", lambda_mult=0.5)
    with pytest.raises(RiclError, match="cannot wrap itself"):
        make_selector("balanced", base="balanced")


def test_kmeans_picks_the_medoid_of_each_cluster(encoder):
    index, x, cluster = clustered(encoder, sizes=[7, 5, 4])
    medoids = []
    for c in range(3):
        rows = np.flatnonzero(cluster == c)
        medoids.append(int(rows[np.argmax((x[rows] @ x[rows].T).sum(axis=1))]))  # brute force: max summed cosine
    selector = KMeansSelector(seed=0).fit(index)
    assert selector.representatives(3) == medoids  # largest cluster first
    for sel in selector.select(["anything at all", "a point"], 3):
        assert set(sel.demo_ids) == set(medoids)  # the same fixed set for every query
    assert KMeansSelector(seed=0).fit(index).representatives(3) == medoids
    assert KMeansSelector().uses_seed


def test_representatives_skip_the_query_text(encoder):
    index, _, _ = clustered(encoder, sizes=[6, 6])
    for selector in (KMeansSelector(), VoteKSelector(n_neighbors=3)):
        reps = selector.fit(index).representatives(3)
        query = index.example(reps[0]).text
        chosen = selector.select([query], 2)[0].demo_ids
        assert reps[0] not in chosen and len(set(chosen)) == 2


def test_budget_gives_each_query_its_nearest_labelled_examples(topics):
    index, topic_of = topics
    selector = KMeansSelector(budget=3, seed=0).fit(index)
    labelled = selector.representatives(3)
    assert sorted(topic_of[i] for i in labelled) == ["cats", "football", "markets"]
    for query, topic in (("a cat on a rug", "cats"), ("goals in the final", "football"), ("bank rates", "markets")):
        (chosen,) = selector.select([query], 1)[0].demo_ids
        assert chosen in labelled and topic_of[chosen] == topic
    with pytest.raises(RiclError, match="budget=3"):
        selector.select(["cat"], 4)


def exact_votes(x, n_neighbors, rho, picked):
    """Vote-k scores by the paper's formula with exact fractions, for every row given the picked rows."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = [set(np.argsort(-sims[v])[:n_neighbors].tolist()) for v in range(len(x))]
    return [sum((Fraction(1) / Fraction(rho) ** len(neighbours[v] & set(picked))
                 for v in range(len(x)) if u in neighbours[v] and v not in picked), Fraction(0))
            for u in range(len(x))]


def test_votek_is_a_valid_greedy_sequence(encoder):
    index, x, _ = clustered(encoder, sizes=[8, 6, 5, 3], seed=3, spread=0.05)
    picks = VoteKSelector(n_neighbors=4).fit(index).representatives(6)
    for step, pick in enumerate(picks):
        votes = exact_votes(x, 4, 10, picks[:step])
        assert votes[pick] == max(v for u, v in enumerate(votes) if u not in picks[:step])  # ties allowed


def test_votek_covers_every_cluster(encoder):
    index, _, cluster = clustered(encoder, sizes=[9, 6, 4], seed=1)
    picks = VoteKSelector(n_neighbors=3).fit(index).representatives(3)
    assert sorted(cluster[picks]) == [0, 1, 2]
    assert cluster[picks[0]] == 0  # the densest cluster gets most votes
    for sel in VoteKSelector(n_neighbors=3).fit(index).select(["some query"], 3):
        assert set(sel.demo_ids) == set(picks)


def test_bad_parameters_are_refused():
    for name, params, message in [("mmr", {"lambda_mult": 1.5}, "lambda_mult must be a number in"),
                                  ("mmr", {"fetch_k": 0}, "fetch_k must be a positive integer"),
                                  ("bm25", {"b": 2}, r"b must be a number in \[0, 1.0\]"),
                                  ("kmeans", {"budget": 0}, "budget must be a positive integer"),
                                  ("votek", {"rho": 1}, "rho must be a number greater than 1"),
                                  ("votek", {"order": "up"}, "unknown order"),
                                  ("kmeans", {"n_init": 0}, "n_init must be a positive integer, got 0"),
                                  ("votek", {"n_neighbors": True}, "n_neighbors must be a positive integer"),
                                  ("votek", {"backups": -1}, "backups must be a non-negative integer, got -1"),
                                  ("bm25", {"k1": -1}, r"k1 must be a number in \[0, inf\], got -1"),
                                  ("mmr", {"lambda_mult": "0.5"}, "lambda_mult must be a number in"),
                                  ("band", {"position": -0.1}, r"position must be a number in \[0, 1\]"),
                                  ("knn", {"order": "up"}, "unknown order 'up'"),
                                  ("balanced", {"order": "up"}, "unknown order 'up'"),
                                  ("random", {"k": 3}, r"selector 'random': .*'k'.*; its parameters: \['seed'\]"),
                                  ("kmeans", {"clusters": 3},
                                   r"selector 'kmeans': .*; its parameters: \['budget', 'n_init', 'order', 'seed'\]")]:
        with pytest.raises(RiclError, match=message):
            make_selector(name, **params)
