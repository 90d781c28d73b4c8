"""kmeans medoids and vote-k (selectors/representative.py): the medoid of each cluster by brute force, vote-k's
greedy picks against the paper's formula in exact fractions, the query skipped, a labelling budget."""

from fractions import Fraction

import numpy as np
import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.selectors.representative import KMeansSelector, VoteKSelector


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


def test_kmeans_picks_the_medoid_of_each_cluster(pool_encoder):
    index, x, cluster = clustered(pool_encoder, sizes=[7, 5, 4])
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


def test_representatives_skip_the_query_text(pool_encoder):
    index, _, _ = clustered(pool_encoder, sizes=[6, 6])
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


def test_votek_is_a_valid_greedy_sequence(pool_encoder):
    index, x, _ = clustered(pool_encoder, sizes=[8, 6, 5, 3], seed=3, spread=0.05)
    picks = VoteKSelector(n_neighbors=4).fit(index).representatives(6)
    for step, pick in enumerate(picks):
        votes = exact_votes(x, 4, 10, picks[:step])
        assert votes[pick] == max(v for u, v in enumerate(votes) if u not in picks[:step])  # ties allowed


def test_votek_covers_every_cluster(pool_encoder):
    index, _, cluster = clustered(pool_encoder, sizes=[9, 6, 4], seed=1)
    picks = VoteKSelector(n_neighbors=3).fit(index).representatives(3)
    assert sorted(cluster[picks]) == [0, 1, 2]
    assert cluster[picks[0]] == 0  # the densest cluster gets most votes
    for sel in VoteKSelector(n_neighbors=3).fit(index).select(["some query"], 3):
        assert set(sel.demo_ids) == set(picks)
