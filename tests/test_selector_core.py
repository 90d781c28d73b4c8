"""The checks `Selector` does for every registered strategy (the query's own text never shown, k against
the pool without the query, a fit gone stale, fields shared with the query), unknown names and bad requests, and
the parameter checks (selectors/checks.py), on the tiny SST-2 data."""

import math
import re

import numpy as np
import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.base import SELECTORS, make_selector
from retrieval_icl.selectors.checks import (
    check_count,
    check_fraction,
    check_greater,
    check_in_range,
    check_order,
    check_positive_int,
)
from retrieval_icl.selectors.knn import KNNSelector
from retrieval_icl.selectors.random import RandomSelector

FITS_STATE = {"adaptive", "balanced", "bm25", "kmeans", "votek"}  # fit computes state from the pool


EXACT_K = {"kmeans": {"budget": 20}, "votek": {"budget": 20}, "adaptive": {"thresholds": {1: 1.0}}}


def uniform_lm(texts, demo_ids) -> np.ndarray:
    """mdl's language model in tests of every selector: no preference, so mdl keeps knn's selection."""
    return np.full((len(texts), 2), 0.5)


def fitted(name: str, index: DemoIndex, **params):
    """A registered selector fitted on `index`, given a language model where it needs one (mdl)."""
    selector = make_selector(name, **(EXACT_K.get(name, {}) | params)).fit(index)
    return selector.use_lm(uniform_lm) if name == "mdl" else selector


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_query_in_pool_is_never_selected(pool_and_queries, name):
    index, pool, _ = pool_and_queries
    queries = pool[:10]
    for q, sel in zip(queries, fitted(name, index).select(queries, 6)):
        assert len(sel.demo_ids) == 6 == len(set(sel.demo_ids)) and q.id not in sel.demo_ids
        assert all(index.example(i).text != q.text for i in sel.demo_ids)


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


def test_k_equal_to_pool_minus_query_works_and_one_more_fails(pool_encoder):
    pool = [Example(i, (t,), i % 2) for i, t in enumerate(["good", "bad", "fine", "awful"])]
    index = DemoIndex(pool_encoder).build(pool)
    sel = KNNSelector().fit(index).select(["good"], 3)[0]
    assert sorted(sel.demo_ids) == [1, 2, 3]
    with pytest.raises(RiclError, match="without the query"):
        KNNSelector().fit(index).select(["good"], 4)
    with pytest.raises(RiclError, match="without the query"):
        RandomSelector().fit(index).select(["good"], 4)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_k_larger_than_the_pool_without_the_query_has_one_message(pool_and_queries, pool_encoder, name):
    _, pool, _ = pool_and_queries
    copy = Example(100, pool[0].texts, 1)  # a second example with the query's text
    selector = fitted(name, DemoIndex(pool_encoder).build(pool[:12] + [copy]))
    with pytest.raises(RiclError, match=re.escape("k=12 is larger than the pool without the query (11 examples)")):
        selector.select([pool[0].text], 12)
    with pytest.raises(RiclError, match=re.escape("k=14 is larger than the pool without the query (13 examples)")):
        selector.select(["an unseen query"], 14)
    chosen = selector.select([pool[0].text], 11)[0].demo_ids  # exactly the pool without the query: all of it
    assert sorted(chosen) == [ex.id for ex in pool[1:12]]


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_a_grown_pool_needs_a_new_fit_where_fit_computed_state(pool_and_queries, pool_encoder, name):
    _, pool, _ = pool_and_queries
    index = DemoIndex(pool_encoder).build(pool[:12])
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
