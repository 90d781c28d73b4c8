"""DPP selector: the greedy MAP against brute force, a known answer on near duplicates, exclusion, order, checks."""

import itertools

import numpy as np
import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.arrays import dpp_greedy
from retrieval_icl.selectors.base import SELECTORS, make_selector
from retrieval_icl.selectors.dpp import DPPSelector
from retrieval_icl.selectors.knn import KNNSelector
from retrieval_icl.selectors.mmr import MMRSelector

QUERY = "what the query says"


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def duplicates(tmp_path_factory):
    """Ids 0-2 are a, a' (a near copy of a) and b (a bit less relevant to the query e0, unlike a); 3-7 are far
    fillers; id 9 has the query's own text and its exact embedding, so it would be everyone's nearest."""
    x = np.zeros((9, 8))
    x[0] = unit([0.95, 0.31, 0, 0, 0, 0, 0, 0])  # a: cos 0.95
    x[1] = unit([0.95, 0.31, 0.01, 0, 0, 0, 0, 0])  # a': cos ~0.95, cos(a, a') ~0.99995
    x[2] = unit([0.90, 0, 0, 0.44, 0, 0, 0, 0])  # b: cos ~0.90, cos(a, b) ~0.85
    for row, col in enumerate(range(3, 8), start=3):
        x[row] = unit(np.eye(8)[col] + 0.1 * np.eye(8)[0])  # fillers: cos ~0.1, unlike each other
    x[8] = np.eye(8)[0]
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 9]
    pool = [Example(i, (QUERY if i == 9 else f"example {i}",), i % 2) for i in ids]
    index = DemoIndex(Encoder(cache_dir=tmp_path_factory.mktemp("unused")))  # never loaded: vectors are given
    return index.build(pool, embeddings=x.astype(np.float32)), np.eye(8, dtype=np.float32)[:1]


def random_case(seed, n=8, d=5, scale=0.1):
    """Relevance (n,) as DPPSelector computes it and pairwise cosines (n, n) of seeded unit vectors."""
    rng = np.random.default_rng(seed)
    x, q = unit(rng.normal(size=(n, d))), unit(rng.normal(size=d))
    cos = x @ q
    return np.exp((cos - cos.max()) / (2 * scale)), x @ x.T


def log_det(relevance, similarity, subset):
    kernel = relevance[:, None] * similarity * relevance[None, :]
    return np.linalg.slogdet(kernel[np.ix_(subset, subset)])[1]


def brute_greedy(relevance, similarity, k):
    """Greedy MAP by its definition: each step adds the candidate whose set has the largest log det (slogdet)."""
    chosen = []
    for _ in range(k):
        rest = [i for i in range(len(relevance)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (log_det(relevance, similarity, chosen + [i]), -i)))
    return chosen


def test_dpp_picks_a_and_b_where_knn_picks_the_near_duplicates(duplicates):
    index, q = duplicates
    dpp = DPPSelector(order="nearest_first").fit(index).select_embedded([QUERY], q, 2)[0]
    knn = KNNSelector(order="nearest_first").fit(index).select_embedded([QUERY], q, 2)[0]
    assert sorted(knn.demo_ids) == [0, 1]
    assert dpp.demo_ids[0] in (0, 1) and dpp.demo_ids[1] == 2  # one of a, a', then b
    np.testing.assert_allclose(dpp.scores, [0.95, 0.90], atol=2e-3)  # scores are cosines to the query


def test_dpp_keeps_the_relevant_when_scale_is_small(duplicates):
    """A tiny scale makes relevance dominate: the near copy's relevance outweighs b's diversity."""
    index, q = duplicates
    chosen = DPPSelector(scale=0.001, order="nearest_first").fit(index).select_embedded([QUERY], q, 2)[0]
    assert sorted(chosen.demo_ids) == [0, 1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [0.05, 0.1, 1.0])
def test_dpp_greedy_equals_brute_force_greedy(seed, scale):
    relevance, similarity = random_case(seed, scale=scale)  # 8 candidates in d=5: rank 5
    for k in range(1, 6):
        assert dpp_greedy(relevance, similarity, k) == brute_greedy(relevance, similarity, k)
    spanning = brute_greedy(relevance, similarity, 5)
    rest = [i for i in np.argsort(-relevance, kind="stable") if i not in spanning]  # past the rank: by relevance
    assert dpp_greedy(relevance, similarity, 8) == spanning + rest


def exact_map(relevance, similarity, k):
    """The k-subset of largest log det, by trying every one."""
    subsets = itertools.combinations(range(len(relevance)), k)
    return list(max(subsets, key=lambda s: log_det(relevance, similarity, list(s))))


@pytest.mark.parametrize("seed", range(20))
def test_dpp_greedy_equals_the_brute_force_map(seed):
    """The argmax of log det over all 56 subsets of 3 of 8 candidates, at the default scale."""
    relevance, similarity = random_case(seed)
    assert sorted(dpp_greedy(relevance, similarity, 3)) == exact_map(relevance, similarity, 3)


def test_dpp_greedy_is_an_approximation_of_the_map():
    """Greedy MAP is not exact (Chen et al. 2018): seed 81 is one of 3 in 200 at scale 0.1 where it falls short."""
    relevance, similarity = random_case(81)
    greedy, best = dpp_greedy(relevance, similarity, 3), exact_map(relevance, similarity, 3)
    assert sorted(greedy) != best
    shortfall = log_det(relevance, similarity, best) - log_det(relevance, similarity, greedy)
    assert 0 < shortfall < 0.05


def test_dpp_greedy_fills_by_relevance_once_the_kernel_is_singular():
    relevance = np.array([1.0, 0.9, 0.8, 0.85])
    copies = np.ones((4, 4))  # four copies of one vector: rank 1, so only the first pick adds volume
    assert dpp_greedy(relevance, copies, 3) == [0, 1, 3]
    x = unit([[1, 0], [0.6, 0.8], [0.8, 0.6], [0, 1]])  # rank 2: 0 then 3 (gain 0.72 beats 0.52) span the plane
    assert dpp_greedy(relevance, x @ x.T, 4) == [0, 3, 1, 2]
    assert dpp_greedy(relevance, copies, 9) == [0, 1, 3, 2]  # k above the candidates: all of them


def test_exactly_k_never_the_query_and_in_order(duplicates):
    index, q = duplicates
    first = DPPSelector(order="nearest_first").fit(index).select_embedded([QUERY], q, 5)[0]
    last = DPPSelector().fit(index).select_embedded([QUERY], q, 5)[0]
    shuffled = [DPPSelector(order="random", seed=s).fit(index).select_embedded([QUERY], q, 5)[0] for s in range(4)]
    assert len(first.demo_ids) == 5 == len(set(first.demo_ids)) and 9 not in first.demo_ids
    assert first.scores == sorted(first.scores, reverse=True)
    assert last.demo_ids == first.demo_ids[::-1] and last.scores == first.scores[::-1]
    assert all(sorted(s.demo_ids) == sorted(first.demo_ids) for s in shuffled)
    assert any(s.demo_ids not in (first.demo_ids, last.demo_ids) for s in shuffled)
    np.testing.assert_allclose(first.scores, index.embeddings(first.demo_ids) @ q[0], atol=1e-6)


def test_fetch_k_below_k_and_pool_below_fetch_k(duplicates):
    index, q = duplicates
    few = DPPSelector(fetch_k=1, order="nearest_first").fit(index).select_embedded([QUERY], q, 3)[0]
    assert len(few.demo_ids) == 3 and few.demo_ids[-1] == 2  # fetch_k=1 still fetches k
    whole = DPPSelector(fetch_k=50).fit(index).select_embedded([QUERY], q, 8)[0]
    assert sorted(whole.demo_ids) == [0, 1, 2, 3, 4, 5, 6, 7]  # the whole pool without the query
    with pytest.raises(RiclError, match=r"k=9 is larger than the pool without the query \(8 examples\)"):
        DPPSelector().fit(index).select_embedded([QUERY], q, 9)


def test_never_an_example_sharing_a_field_with_the_query(tmp_path):
    """In a pool of two text fields, the query's siblings (its premise, another hypothesis) are never shown."""
    pool = [Example(i, (f"premise {i // 2}", f"hypothesis {i}"), i % 2) for i in range(6)]
    x = unit(np.eye(6) + 0.3).astype(np.float32)  # all alike; the query sits on id 0
    index = DemoIndex(Encoder(cache_dir=tmp_path)).build(pool, embeddings=x)
    chosen = DPPSelector().fit(index).select_embedded(["premise 0\nanother hypothesis"], x[:1], 4)[0]
    assert sorted(chosen.demo_ids) == [2, 3, 4, 5]
    with pytest.raises(RiclError, match=r"k=5 is larger than the pool without the query \(4 examples\)"):
        DPPSelector().fit(index).select_embedded(["premise 0\nanother hypothesis"], x[:1], 5)


def test_mmr_keeps_its_candidate_fetch_on_a_pool_smaller_than_fetch_k(duplicates):
    """MMR shares DPP's candidate fetch: without the query the whole rest of the pool, most relevant first."""
    index, q = duplicates
    mmr = MMRSelector(lambda_mult=1.0, fetch_k=50, order="nearest_first").fit(index).select_embedded([QUERY], q, 8)[0]
    assert mmr.demo_ids[:3] == [0, 1, 2] and sorted(mmr.demo_ids) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_registered_and_bad_parameters_are_refused():
    assert SELECTORS["dpp"] is DPPSelector and make_selector("dpp", scale=0.5).scale == 0.5
    for params, message in [({"fetch_k": 0}, "fetch_k must be a positive integer, got 0"),
                            ({"fetch_k": 2.5}, "fetch_k must be a positive integer, got 2.5"),
                            ({"scale": 0}, "scale must be a number greater than 0, got 0"),
                            ({"scale": -0.1}, "scale must be a number greater than 0, got -0.1"),
                            ({"scale": "0.1"}, "scale must be a number greater than 0, got '0.1'"),
                            ({"order": "sideways"}, "unknown order 'sideways'"),
                            ({"lambda_mult": 0.5}, r"selector 'dpp': .*; its parameters: \['fetch_k', 'scale', "
                                                   r"'order', 'seed'\]")]:
        with pytest.raises(RiclError, match=message):
            make_selector("dpp", **params)
