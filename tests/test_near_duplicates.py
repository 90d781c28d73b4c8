"""Near-duplicates (issue 20): the normalisation, the pairwise rule on hand-made phrases, the pool lookup against brute
force, PoolTexts' exclusion, and selectors that keep a query's near-duplicates out behind `exclude_near_duplicates`."""

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.errors import RiclError
from retrieval_icl.experiment.compare_config import SelectorConfig
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.near_duplicates import NearDuplicates, is_near_duplicate, normalise
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.base import PoolTexts, make_selector

DATA = Path(__file__).resolve().parent / "data"
QUERY = "a good movie with a great cast"
PHRASES = {  # pool text -> whether it is a near-duplicate of QUERY
    "a good movie with a great cast": True,  # the same text
    "A GOOD movie, with a great cast!": True,  # case and punctuation
    "good movie": True,  # sub-phrases
    "a great cast": True,
    "good": True,
    "a good": True,
    "movie with": True,
    "it is a good movie with a great cast and a fine score": True,  # a super-phrase
    "a good movie with a great script": True,  # 4 of the 5 trigrams of each, neither inside the other
    "good movie with a great cast of thousands": True,  # 4 of the query's 5 trigrams
    "with a great cast of thousands": False,  # 2 of its 4 trigrams: half, not more than half
    "a movie with a good cast": False,  # the same words, one trigram shared
    "a great day": False,  # shares two words, not on boundaries as a phrase
    "the cast": False,
    "goo": False,  # inside "good", not on a word boundary
    "agood movie": False,
    "an utter disaster": False,
}


def test_normalise_lowercases_drops_punctuation_and_splits_like_sst2():
    assert normalise("A GOOD movie!") == "a good movie"
    assert normalise("  it's\tnot\n\nbad ...  ") == "it s not bad"
    assert normalise("don't") == normalise("do n't") == "do n t"  # SST-2 splits n't off its verb
    assert normalise("can't") == normalise("ca n't") == "ca n t"
    assert normalise("It #39;s over") == normalise("it 's over") == "it s over"  # AG News's apostrophe
    assert normalise("-lrb- a -rrb- film") == normalise("( a ) film") == "a film"  # PTB brackets
    assert normalise("Naïve CAFÉ_au-lait 2") == "naïve café au lait 2"  # unicode letters and digits stay
    assert normalise("premise here.\nHypothesis there") == "premise here hypothesis there"  # MNLI: one text
    assert normalise("?!...") == ""


@pytest.mark.parametrize("text, expected", PHRASES.items())
def test_the_pairwise_rule_on_hand_made_phrases(text, expected):
    assert is_near_duplicate(QUERY, text) is expected
    assert is_near_duplicate(text, QUERY) is expected  # symmetric


def test_the_pool_lookup_finds_exactly_the_hand_made_near_duplicates():
    pool = list(PHRASES)
    assert NearDuplicates(pool).rows(QUERY) == [r for r, text in enumerate(pool) if PHRASES[text]]


def test_containment_is_on_word_boundaries_both_ways():
    assert is_near_duplicate("good", "a good movie") and not is_near_duplicate("goo", "a good movie")
    assert is_near_duplicate("not good", "good") and is_near_duplicate("good", "not good")
    assert NearDuplicates(["good", "goo", "not good", "good movie"]).rows("a good movie") == [0, 3]
    assert NearDuplicates(["not good", "no good", "goodness"]).rows("good") == [0, 1]
    assert NearDuplicates(["not good", "good not", "not very good"]).rows("not good") == [0]


def test_empty_texts_match_only_each_other():
    assert is_near_duplicate("...", "!!") and not is_near_duplicate("...", "a film")
    assert NearDuplicates(["...", "a film", ""]).rows("?") == [0, 2]
    assert NearDuplicates(["...", "a film"]).rows("a film") == [1]
    assert NearDuplicates([]).rows("a film") == [] and NearDuplicates(["a film"]).rows("...") == []


def random_texts(rng: np.random.Generator, n: int) -> list[str]:
    """Texts of 1-7 words from 6 words, with case and punctuation noise: sub-phrases and shared trigrams abound."""
    words = np.array(["the", "film", "is", "not", "good", "fun"])
    texts = []
    for _ in range(n):
        chosen = [str(w) for w in rng.choice(words, rng.integers(1, 8))]
        chosen = [w.upper() if rng.random() < 0.1 else w for w in chosen]
        texts.append(" ".join(w + ("," if rng.random() < 0.15 else "") for w in chosen) + rng.choice(["", "!", " ."]))
    return texts


def test_the_pool_lookup_equals_brute_force_over_every_row():
    rng = np.random.default_rng(0)
    pool = random_texts(rng, 300)
    queries = pool[:100] + random_texts(rng, 200)
    found = NearDuplicates(pool)
    hits = 0
    for query in queries:
        expected = [r for r, text in enumerate(pool) if is_near_duplicate(query, text)]
        assert found.rows(query) == expected, query
        hits += len(expected)
    assert 0.05 < hits / (len(queries) * len(pool)) < 0.95  # the rule both holds and fails often here


def test_the_tables_are_built_once_on_first_use_and_shared_by_threads():
    pool = random_texts(np.random.default_rng(1), 500)
    found = NearDuplicates(pool)
    assert not found.built
    answers: list[list[int]] = []
    threads = [threading.Thread(target=lambda: answers.append(found.rows(pool[0]))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found.built and len(answers) == 8
    assert all(a == [r for r, text in enumerate(pool) if is_near_duplicate(pool[0], text)] for a in answers)


def test_a_pool_lookup_survives_pickling_built_or_not():
    pool = random_texts(np.random.default_rng(2), 50)
    for found in (NearDuplicates(pool), NearDuplicates(pool).build()):
        copy = pickle.loads(pickle.dumps(found))
        assert copy.built == found.built and copy.rows(pool[3]) == found.rows(pool[3]) != []


@pytest.fixture(scope="module")
def phrase_index(tmp_path_factory):
    """The 40 tiny SST-2 train lines plus sub- and super-phrases of the first one (ids 100..)."""
    encoder = Encoder(cache_dir=tmp_path_factory.mktemp("emb"))
    pool = load_examples(load_task("sst2"), "train", DATA)
    phrases = ["warm, funny and wise", "a warm, funny and wise film indeed", "funny and wise film",
               "A WARM, FUNNY AND WISE FILM!"]
    pool += [Example(100 + i, (t,), 1) for i, t in enumerate(phrases)]
    return DemoIndex(encoder).build(pool)


def test_pool_texts_add_near_duplicates_only_when_asked(phrase_index):
    pool = PoolTexts(phrase_index)
    query = "a warm, funny and wise film"
    assert pool.excluded_rows(query) == [0]  # the same text only
    assert not pool.duplicates.built  # a pool that never asks builds nothing
    assert pool.excluded_rows(query, near_duplicates=True) == [0, 40, 41, 42, 43]
    assert pool.excluded_ids(query, near_duplicates=True) == {0, 100, 101, 102, 103}
    assert pool.available(query, near_duplicates=True) == len(phrase_index) - 5
    assert np.flatnonzero(~pool.keep(query, near_duplicates=True)).tolist() == [0, 40, 41, 42, 43]
    on = PoolTexts(phrase_index, near_duplicates=True)
    assert on.excluded_ids(query) == {0, 100, 101, 102, 103} and on.excluded_ids(query, near_duplicates=False) == {0}


@pytest.mark.parametrize("name", ["knn", "random", "mmr", "balanced"])
def test_a_selector_never_shows_a_near_duplicate_with_the_option(phrase_index, name):
    texts = {ex.id: ex.text for ex in phrase_index.examples}
    query = "a warm, funny and wise film"
    with_option = make_selector(name, exclude_near_duplicates=True).fit(phrase_index).select([query], 6)[0]
    assert len(with_option.demo_ids) == 6
    assert not any(is_near_duplicate(query, texts[i]) for i in with_option.demo_ids)
    if name == "knn":  # without it the phrases are the nearest neighbours
        without = make_selector(name).fit(phrase_index).select([query], 6)[0]
        assert {100, 101, 102, 103} <= set(without.demo_ids)


def test_the_option_checks_its_value_and_travels_from_a_config():
    assert make_selector("knn").exclude_near_duplicates is False
    with pytest.raises(RiclError, match="exclude_near_duplicates must be true or false, got 'yes'"):
        make_selector("knn", exclude_near_duplicates="yes")
    config = SelectorConfig(name="knn", exclude_near_duplicates=True)
    assert config.params == {"exclude_near_duplicates": True}  # what the planner passes to make_selector
    assert make_selector(config.name, **config.params).exclude_near_duplicates is True
    assert SelectorConfig(name="knn", params={"exclude_near_duplicates": True}).exclude_near_duplicates is True
    with pytest.raises(ValueError, match="exclude_near_duplicates is False but its params give True"):
        SelectorConfig(name="knn", exclude_near_duplicates=False, params={"exclude_near_duplicates": True})


def test_holders_are_the_longer_texts_a_query_is_a_phrase_of():
    pool = NearDuplicates(["a good movie", "A GOOD movie!", "good", "a good movie indeed", "a bad day"])
    assert pool.holders("a good movie") == [3]  # not itself, its case variant, nor the phrase inside it
    assert pool.holders("good") == [0, 1, 3]
    assert pool.holders("a good movie indeed") == [] and pool.holders("a bad day") == []
