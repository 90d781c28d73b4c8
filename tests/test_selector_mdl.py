"""The MDL selector: minimum label entropy under the LM among sampled selections, on planted cases and in a run."""

import json

import numpy as np
import pytest
from standin import TINY_DATA, VoteScorer, tiny_tokenizer

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.experiment.compare import run_compare
from retrieval_icl.experiment.compare_config import CompareConfig, SelectorConfig
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.base import make_selector
from retrieval_icl.selectors.mdl import MDLSelector, label_entropy

D = 8


@pytest.fixture
def line(tmp_path):
    """Five pool points at decreasing cosine to the query direction e0: ids 0..4, nearest first."""
    angles = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    vectors = np.zeros((5, D))
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    pool = [Example(i, (f"pool text {i}",), i % 2) for i in range(5)]
    query = np.eye(D)[0][None]
    return DemoIndex(Encoder(cache_dir=tmp_path)).build(pool, embeddings=vectors), query


class Planted:
    """An LM stand-in: confident (one label) only after the planted demonstrations, uncertain after any others."""

    def __init__(self, planted: set[int]) -> None:
        self.planted, self.calls = planted, []

    def __call__(self, texts, demo_ids):
        self.calls.append([list(ids) for ids in demo_ids])
        return np.array([[0.99, 0.01] if set(ids) == self.planted else [0.5, 0.5] for ids in demo_ids])


def test_label_entropy_in_nats():
    assert label_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx([np.log(2), 0.0])


def test_mdl_picks_the_planted_selection_among_its_samples(line):
    index, query = line
    lm = Planted({0, 2})  # not knn's {0, 1}
    selector = MDLSelector(candidates=3, samples=3).fit(index).use_lm(lm)
    (selection,) = selector.select_embedded(["the query"], query, 2)
    assert selection.demo_ids == [2, 0]  # nearest last, as shown to the LM
    (scored,) = lm.calls
    assert scored[0] == [1, 0]  # knn's selection is the first sample, in prompt order
    assert sorted(map(sorted, scored)) == [[0, 1], [0, 2], [1, 2]]  # every 2-subset of the 3 candidates


def test_a_tie_goes_to_knns_selection(line):
    index, query = line
    selector = MDLSelector(candidates=5, samples=6).fit(index).use_lm(Planted(set()))  # all equally uncertain
    assert selector.select_embedded(["the query"], query, 2)[0].demo_ids == [1, 0]


def test_samples_are_seeded_by_query_and_seed(line):
    index, query = line
    calls = []
    for seed in (0, 0, 1):
        lm = Planted(set())
        MDLSelector(candidates=5, samples=4, seed=seed).fit(index).use_lm(lm).select_embedded(["q"], query, 2)
        calls.append(lm.calls[0])
    assert calls[0] == calls[1] and calls[0] != calls[2]


def test_without_a_language_model_it_says_what_to_do(line):
    index, query = line
    with pytest.raises(RiclError, match="call use_lm"):
        MDLSelector().fit(index).select_embedded(["q"], query, 2)


@pytest.mark.parametrize("params, message", [({"candidates": 0}, "candidates must be a positive integer"),
                                             ({"samples": -1}, "samples must be a positive integer"),
                                             ({"order": "sideways"}, "unknown order")])
def test_bad_parameters(params, message):
    with pytest.raises(RiclError, match=message):
        make_selector("mdl", **params)


def test_compare_runs_mdl_with_the_scorer_and_never_picks_a_less_certain_prompt_than_knn(tmp_path):
    config = CompareConfig(task="sst2", data_dir=str(TINY_DATA), k=3, index_root=str(tmp_path / "idx"),
                           output_dir=str(tmp_path / "out"), capture_attention=False,
                           selectors=[SelectorConfig(name="knn", params={"order": "nearest_last"}),
                                      SelectorConfig(name="mdl", params={"candidates": 8, "samples": 4})])
    scorer = VoteScorer(tiny_tokenizer())
    run_compare(config, scorer=scorer)
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    knn = {r["query_id"]: r for r in records if r["selector"] == "knn"}
    mdl = [r for r in records if r["selector"] == "mdl"]
    assert len(mdl) == 8 and scorer.score_calls[0] == 8 * 4  # every query's four samples scored in one call
    entropy = {name: label_entropy(np.exp([r["label_log_probs"] for r in rs])) for name, rs in
               (("mdl", mdl), ("knn", [knn[r["query_id"]] for r in mdl]))}
    assert (entropy["mdl"] <= entropy["knn"] + 1e-12).all()
    assert (entropy["mdl"] < entropy["knn"] - 1e-6).any()  # some query found a more certain prompt than knn's


@pytest.mark.lm
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_with_a_real_lm_mdl_keeps_the_least_uncertain_of_its_samples(tmp_path, model, request):
    """The packaged LM scores each sample alone; mdl's pick (from one batched call) has the least label entropy."""
    from retrieval_icl.data.tasks import load_examples, load_task
    from retrieval_icl.experiment.plan import lm_label_probs
    from retrieval_icl.lm.prompts import PromptBuilder

    runner = request.getfixturevalue(f"{model}_runner")
    task = load_task("sst2")
    index = DemoIndex(Encoder(cache_dir=tmp_path)).build(load_examples(task, "train", TINY_DATA)[:16])
    builder = PromptBuilder(task, "default", runner.tokenizer, context_length=runner.context_length)
    continuations = runner.label_continuations(builder.label_words, task.template.label_prefix)
    batched = lm_label_probs(builder, continuations, runner, index)
    seen: list[list[int]] = []

    def recording(texts, demo_ids):
        seen.extend(list(ids) for ids in demo_ids)
        return batched(texts, demo_ids)

    query = load_examples(task, "validation", TINY_DATA)[0]
    selector = MDLSelector(candidates=6, samples=4).fit(index).use_lm(recording)
    chosen = selector.select([query], 3)[0].demo_ids
    alone = [label_entropy(batched([query.text], [ids]))[0] for ids in seen]  # each sample scored on its own
    assert len(seen) == 4 and chosen in seen
    assert max(alone) - min(alone) > 1e-3  # the samples differ, so picking the least uncertain one is a real choice
    assert alone[seen.index(chosen)] == pytest.approx(min(alone), abs=1e-4)
