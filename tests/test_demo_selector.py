"""DemoSelector: load a saved index, select with fields and labels, add examples, save back, share between threads."""

import threading
from dataclasses import replace

import numpy as np
import pytest
from counting_encoder import counting_encoder
from shared_data import SHARED_DATA

from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.errors import RiclError
from retrieval_icl.lm.models import DEFAULT_MODEL
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.knn import KNNSelector
from retrieval_icl.serving.demo_selector import DemoSelector, SelectedExample

pytestmark = pytest.mark.shared_data  # every index here is built from SST-2 or RTE validation rows


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return Encoder(cache_dir=tmp_path_factory.mktemp("emb"))


def save_task_index(encoder, directory, task_name, split, n, text_fields=True):
    task = load_task(task_name)
    examples = load_examples(task, split, SHARED_DATA)[:n]
    index = DemoIndex(encoder).build(examples, task=task.name, label_names=task.label_names,
                                     text_fields=task.text_fields if text_fields else None)
    index.save(directory)
    return examples


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    """(an Encoder, its CountingModel): the encoder's model calls are recorded."""
    return counting_encoder(tmp_path_factory.mktemp("emb-counting"))


@pytest.fixture
def sst2_dir(encoder, tmp_path):
    save_task_index(encoder, tmp_path / "sst2", "sst2", "validation", 80)
    return tmp_path / "sst2"


@pytest.fixture(scope="module")
def rte_dir(encoder, tmp_path_factory):
    directory = tmp_path_factory.mktemp("rte") / "index"
    save_task_index(encoder, directory, "rte", "validation", 40)
    return directory


def test_select_returns_fields_labels_and_cosines(sst2_dir, encoder):
    demos = DemoSelector.load(sst2_dir, encoder=encoder)
    chosen = demos.select("a gorgeous, witty film", k=4)
    knn = KNNSelector().fit(demos.index).select(["a gorgeous, witty film"], 4)[0]
    assert [c.id for c in chosen] == knn.demo_ids
    q = encoder.encode(["a gorgeous, witty film"])[0]
    for c in chosen:
        ex = demos.index.example(c.id)
        assert isinstance(c, SelectedExample) and c.fields == {"sentence": ex.text}
        assert c.label == ex.label and c.label_name == ["negative", "positive"][ex.label]
        assert c.score == pytest.approx(float(demos.index.embeddings([c.id])[0] @ q), abs=1e-5)
    assert demos.select({"sentence": "a gorgeous, witty film"}, k=4) == chosen
    assert chosen[0].to_dict()["fields"] == chosen[0].fields


QUERIES = ["a gorgeous, witty film", {"sentence": "dull and slow"}, "the cast is a joy", "a gorgeous, witty film",
           "nothing happens for two long hours, and then it ends"]
ADAPTIVE = {"bandwidth": 0.1, "thresholds": {1: 0.6, 2: 0.55}}  # two of QUERIES get 2 demonstrations, three get 4


def assert_same_selections(got, expected):
    """Equal, scores within float rounding: a batched encoder pass pads, so its embeddings differ in the last bits."""
    assert [[replace(c, score=0.0) for c in row] for row in got] == [[replace(c, score=0.0) for c in row]
                                                                    for row in expected]
    assert np.allclose([c.score for row in got for c in row], [c.score for row in expected for c in row], atol=1e-5)


@pytest.mark.parametrize("strategy,params", [("knn", {}), ("mmr", {"lambda_mult": 0.5}), ("random", {}),
                                             ("bm25", {}), ("adaptive", ADAPTIVE)])
def test_select_many_is_select_one_by_one_in_one_encoder_call(sst2_dir, counting, strategy, params):
    encoder, model = counting
    demos = DemoSelector.load(sst2_dir, encoder=encoder, strategy=strategy, **params).warm_up()
    model.calls.clear()
    together = demos.select_many(QUERIES, k=4)
    assert model.calls == [4]  # the four distinct texts, in one call
    assert_same_selections(together, [demos.select(q, k=4) for q in QUERIES])
    assert together[0] == together[3] and all(0 < len(row) <= 4 for row in together)
    if strategy == "adaptive":
        assert [len(row) for row in together] == [2, 4, 4, 2, 4]


def test_select_many_takes_embeddings_from_embed(sst2_dir, encoder):
    demos = DemoSelector.load(sst2_dir, encoder=encoder)
    vectors = demos.embed(QUERIES)
    assert vectors.shape == (5, 384)
    assert demos.select_many(QUERIES, 3, "mmr", embeddings=vectors) == demos.select_many(QUERIES, 3, "mmr")
    with pytest.raises(RiclError, match="got 2 embeddings for 5 query texts"):
        demos.select_many(QUERIES, 3, embeddings=vectors[:2])
    assert demos.select_many([], 3) == []
    with pytest.raises(RiclError, match="select_many expects a list of queries"):
        demos.select_many("a gorgeous, witty film", 3)
    with pytest.raises(RiclError, match="query text is empty"):
        demos.select_many(["fine", "  "], 3)


def test_two_field_queries_and_strategies(rte_dir, encoder):
    demos = DemoSelector.load(rte_dir, encoder=encoder, strategy="mmr", lambda_mult=0.7)
    assert demos.text_fields == ["sentence1", "sentence2"]
    query = {"sentence2": "The man is asleep.", "sentence1": "A man sleeps on a bench in the park."}
    by_fields = demos.select(query, k=3)
    assert by_fields == demos.select("A man sleeps on a bench in the park.\nThe man is asleep.", k=3)
    assert all(set(c.fields) == {"sentence1", "sentence2"} for c in by_fields)
    knn = demos.select(query, k=3, strategy="knn")
    assert by_fields[-1].id == knn[-1].id  # MMR's first pick is the nearest, placed next to the query
    with pytest.raises(RiclError, match=r"do not match the index's text fields \['sentence1', 'sentence2'\]"):
        demos.select({"sentence1": "only one"}, k=3)
    with pytest.raises(RiclError, match="unknown strategy 'nope'; known:"):
        demos.select(query, k=3, strategy="nope")


def test_bad_queries_are_refused(rte_dir, encoder):
    demos = DemoSelector.load(rte_dir, encoder=encoder)
    for query, message in [("   ", "empty"), ("bad \ud800 text", "not valid Unicode"), (42, "must be a string"),
                           ({"sentence1": "x", "sentence2": 3}, "must be a string")]:
        with pytest.raises(RiclError, match=message):
            demos.select(query, k=2)
    with pytest.raises(RiclError, match="larger than the pool"):
        demos.select("a", k=41)
    with pytest.raises(RiclError, match="unknown selector 'nope'"):
        DemoSelector.load(rte_dir, strategy="nope")


def test_text_fields_fall_back_to_task_then_generic(encoder, tmp_path):
    save_task_index(encoder, tmp_path / "a", "sst2", "validation", 5, text_fields=False)
    assert DemoSelector.load(tmp_path / "a", encoder=encoder).text_fields == ["sentence"]
    examples = load_examples(load_task("rte"), "validation", SHARED_DATA)[:5]
    DemoIndex(encoder).build(examples).save(tmp_path / "b")
    assert DemoSelector.load(tmp_path / "b", encoder=encoder).text_fields == ["text1", "text2"]


def test_added_examples_are_selected_saved_and_reloaded(sst2_dir, encoder):
    demos = DemoSelector.load(sst2_dir, encoder=encoder, strategy="bm25")
    demos.select("warm up the bm25 index", k=2)
    before = len(demos)
    ids = demos.add_examples([{"fields": {"sentence": "the zorblax soundtrack is a delight"}, "label": "positive"},
                              {"fields": "a glumtrap of a sequel", "label": 0}])
    assert ids == [int(demos.index.ids.max()) - 1, int(demos.index.ids.max())] and len(demos) == before + 2
    top = demos.select("zorblax", k=1)[0]  # refitted after the add, so the new word is known
    assert (top.id, top.fields["sentence"], top.label_name) == (
        ids[0], "the zorblax soundtrack is a delight", "positive")
    assert len(DemoIndex.load(sst2_dir)) == before  # not saved yet
    demos.save()
    reloaded = DemoSelector.load(sst2_dir, encoder=encoder, strategy="bm25")
    assert len(reloaded) == before + 2 and reloaded.select("glumtrap", k=1)[0].id == ids[1]


def test_a_bad_row_adds_nothing(sst2_dir, encoder):
    demos = DemoSelector.load(sst2_dir, encoder=encoder)
    good = {"fields": {"sentence": "fine"}, "label": 1}
    for bad, message in [({"fields": {"sentence": "x"}, "label": "great"}, r"not an id 0..1 or one of"),
                         ({"fields": {"sentence": "x"}, "label": 2}, "not an id"),
                         ({"fields": {"text": "x"}, "label": 1}, "do not match"),
                         ({"fields": {"sentence": " "}, "label": 1}, "empty"),
                         ({"sentence": "x", "label": 1}, "expected a dict with keys 'fields' and 'label'")]:
        with pytest.raises(RiclError, match=message):
            demos.add_examples([good, bad])
        assert len(demos) == 80
    with pytest.raises(RiclError, match="non-empty list"):
        demos.add_examples([])


def test_concurrent_selects_see_whole_adds(sst2_dir, encoder):
    demos = DemoSelector.load(sst2_dir, encoder=encoder, strategy="balanced")
    errors, seen = [], []

    def reader(query):
        try:
            for _ in range(15):
                for c in demos.select(query, k=4):
                    assert demos.index.example(c.id).text == c.fields["sentence"]
                seen.append(len(demos))
        except Exception as e:  # reported below: an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(q,)) for q in ("dull", "a joy", "long and slow")]
    for t in threads:
        t.start()
    added = [i for n in range(6) for i in demos.add_examples(
        [{"fields": f"added review number {n} part {p}", "label": p} for p in (0, 1)], save=True)]
    for t in threads:
        t.join()
    assert errors == []
    assert seen and set(seen) <= set(range(80, 93))
    on_disk = DemoIndex.load(sst2_dir)
    assert len(on_disk) == 92 and set(added) <= set(on_disk.ids.tolist())
    assert np.allclose(on_disk.embeddings(added), demos.index.embeddings(added), atol=1e-6)


@pytest.mark.lm  # the packaged SmolLM2 and Gemma 3 tokenizers (no weights)
def test_a_token_budget_keeps_the_most_similar_whole_demonstrations(sst2_dir, encoder):
    demos = DemoSelector.load(sst2_dir, encoder=encoder)
    assert demos.tokenizer == DEFAULT_MODEL  # a name: loaded on the first budgeted select
    query = "a gorgeous, witty film"
    everything = demos.select(query, k=6)
    full = demos.prompt_tokens(query, everything)
    assert demos.select(query, k=6, max_tokens=full) == everything
    kept = demos.select(query, k=6, max_tokens=full - 1)
    assert 0 < len(kept) < 6 and kept == [c for c in everything if c in kept]  # whole, in prompt order
    assert kept[-1] == everything[-1] and demos.prompt_tokens(query, kept) <= full - 1  # the nearest first
    with pytest.raises(RiclError, match="max_tokens=5 leaves no room for a demonstration: the prompt without "
                                        r"demonstrations takes \d+ tokens and the shortest with one demonstration \d+"):
        demos.select(query, k=6, max_tokens=5)
    with pytest.raises(RiclError, match="max_tokens must be a positive integer, got 0"):
        demos.select(query, k=6, max_tokens=0)


@pytest.mark.lm  # the packaged SmolLM2 tokenizer (no weights)
def test_select_many_within_a_token_budget_is_select_one_by_one(sst2_dir, encoder):
    demos = DemoSelector.load(sst2_dir, encoder=encoder)
    budget = demos.prompt_tokens(QUERIES[0], demos.select(QUERIES[0], k=6)) - 1
    together = demos.select_many(QUERIES, k=6, max_tokens=budget)
    assert_same_selections(together, [demos.select(q, k=6, max_tokens=budget) for q in QUERIES])
    assert 0 < len(together[0]) < 6


@pytest.mark.lm
def test_two_field_budgets_count_with_a_named_tokenizer(rte_dir, encoder):
    demos = DemoSelector.load(rte_dir, encoder=encoder, tokenizer="gemma3-270m")
    fields = {"sentence1": "A man sleeps on a bench in the park.", "sentence2": "The man is asleep."}
    text = "A man sleeps on a bench in the park.\nThe man is asleep."
    everything = demos.select(fields, k=4)
    tokens = demos.prompt_tokens(fields, everything)
    assert demos.prompt_tokens(text, everything) == tokens
    kept = demos.select(text, k=4, max_tokens=tokens - 1)
    assert 0 < len(kept) < 4 and kept == demos.select(fields, k=4, max_tokens=tokens - 1)
    with pytest.raises(RiclError, match=r"the query text has 1 line\(s\), expected one per text field"):
        demos.select("one line only", k=2, max_tokens=500)


@pytest.fixture
def gated_strategy():
    """A registered knn whose fit waits for `gate` once `hold` is set: an add's refit can be held in mid-fit."""
    from retrieval_icl.selectors.base import SELECTORS

    hold, gate, in_fit = threading.Event(), threading.Event(), threading.Event()

    class GatedFit(KNNSelector):
        name = "test-gated-fit"

        def fit(self, index):
            if hold.is_set():
                in_fit.set()
                assert gate.wait(60), "the test never opened the gate"
            return super().fit(index)

    yield hold, gate, in_fit
    SELECTORS.pop("test-gated-fit")


def test_an_add_refits_off_the_select_lock_and_swaps_pool_and_fits_at_once(sst2_dir, encoder, gated_strategy):
    hold, gate, in_fit = gated_strategy
    demos = DemoSelector.load(sst2_dir, encoder=encoder, strategy="test-gated-fit").warm_up(["bm25"])
    hold.set()
    added: list[int] = []
    adder = threading.Thread(target=lambda: added.extend(demos.add_examples(
        [{"fields": "the zorblax soundtrack is a delight", "label": 1}], save=True)))
    adder.start()
    assert in_fit.wait(60)  # the add is refitting on the grown pool ...
    during = demos.select("zorblax soundtrack", k=3, strategy="bm25")  # ... and a select is answered meanwhile
    assert len(demos) == 80 and all(c.id < 80 for c in during)  # from the pool as it was: nothing half added
    gate.set()
    adder.join(60)
    assert not adder.is_alive() and added == [80] and len(demos) == 81
    assert demos.select("zorblax soundtrack", k=1, strategy="bm25")[0].id == 80  # the refitted BM25 sees it
    assert demos.select("zorblax soundtrack", k=1)[0].id == 80


def test_background_fits_refuse_a_select_until_its_fit_is_done(sst2_dir, encoder):
    from retrieval_icl.errors import NotFittedYetError

    demos = DemoSelector.load(sst2_dir, encoder=encoder, background_fits=True).warm_up(["kmeans"])
    plain = DemoSelector.load(sst2_dir, encoder=encoder)
    assert demos.select("a joy", k=3)  # knn needs no fit per k
    with pytest.raises(NotFittedYetError, match="'kmeans' for k=5 is being fitted"):
        demos.select("a joy", k=5, strategy="kmeans")
    with pytest.raises(NotFittedYetError):  # asked again while it fits: still one fit
        demos.require_fitted("kmeans", 5)
    wait_until(lambda: demos.fitted_for("kmeans", 5))
    assert not demos.fitted_for("kmeans", 6) and not demos._pending
    assert demos.select("a joy", k=5, strategy="kmeans") == plain.select("a joy", k=5, strategy="kmeans")
    demos.add_examples([{"fields": "an added review of a film", "label": 1}])
    wait_until(lambda: demos.fitted_for("kmeans", 5))  # the add refits it for the k it had, on the grown pool
    grown = DemoSelector(demos.index.copy())
    assert demos.select("a joy", k=5, strategy="kmeans") == grown.select("a joy", k=5, strategy="kmeans")


def wait_until(condition, seconds: float = 120.0) -> None:
    """Poll until condition() holds; fail after `seconds` (a deadline against a hang, not a timing)."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the background fit never finished"
        time.sleep(0.02)
