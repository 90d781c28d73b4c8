"""The attention sink: the preamble (BOS) belongs to no demonstration, so no kernel weight can inherit it."""

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA
from standin import byte_level_tokenizer
from test_capture import eager_rows

from retrieval_icl.analysis.attention import span_max_weights
from retrieval_icl.analysis.votes import argmax_breaking_ties, class_votes
from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_task
from retrieval_icl.lm.attention_summary import demo_attention_summary, span_attention_mass
from retrieval_icl.lm.capture import capture_attention
from retrieval_icl.lm.prompts import PromptBuilder

pytestmark = pytest.mark.lm
DEMOS = [Example(1, ("a gorgeous, witty film",), 1), Example(2, ("dull and far too long",), 0),
         Example(3, ("I loved every minute",), 1)]


def test_a_planted_sink_leaves_demo_1s_kernel_weight_unchanged(smollm2):
    prompt = PromptBuilder(load_task("sst2"), tokenizer=smollm2.tokenizer).build(DEMOS, ("what a ride",))
    spans = list(zip(prompt.x_spans, prompt.y_spans))
    rng = np.random.default_rng(0)
    row = rng.uniform(0.0, 0.01, size=(2, 3, len(prompt.token_ids)))
    weights, masses = [], []
    for sink in (0.0, 0.9):  # no sink, then 90% of every head's attention on token 0
        row[..., 0] = sink
        summary = demo_attention_summary(row, spans).astype(np.float32)
        weights.append(span_max_weights(summary))
        masses.append(span_attention_mass(row, prompt.preamble_span).astype(np.float32))
    assert np.array_equal(weights[0], weights[1])  # demo 1 (and every demo) keeps its kernel weight
    assert np.allclose(masses[1], 0.9, atol=1e-3) and np.allclose(masses[0], 0.0)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory, smollm2):
    """24 SST-2 validation queries, 8 random demonstrations each, attention captured, on the packaged SmolLM2."""
    from retrieval_icl.experiment.compare import run_compare
    from retrieval_icl.experiment.compare_config import CompareConfig
    from retrieval_icl.results_dir import load_results

    tmp = tmp_path_factory.mktemp("sink")
    config = CompareConfig(task="sst2", data_dir=str(SHARED_DATA), pool_size=400, n_queries=24, k=8,
                           selectors=[{"name": "random"}], index_root=str(tmp / "idx"), output_dir=str(tmp / "out"))
    _, _, out = run_compare(config)
    results = load_results(out)
    return results, results.summaries("random-seed0")


@pytest.mark.shared_data
def test_demo_1_input_mass_is_like_the_other_demos(random_run):
    results, summaries = random_run
    x_mass = np.mean([s[..., 0].mean(axis=(0, 1)) for s in summaries], axis=0)  # (8,) per prompt position
    assert x_mass[0] < 2 * x_mass[1:].mean(), x_mass
    sink = np.mean([r.attention.preamble_mass for r in results.records])
    assert sink > x_mass.max()  # the sink is still there, on the preamble, outside every demonstration


@pytest.mark.shared_data
def test_few_heads_vote_demo_1s_label_on_almost_every_query(random_run):
    results, summaries = random_run
    labels = [r.demo_labels for r in results.records]
    votes = class_votes([span_max_weights(s) for s in summaries], labels, results.n_labels)  # (Q, L, H, C)
    predicted, _ = argmax_breaking_ties(votes)
    first = np.array([lab[0] for lab in labels])[:, None, None]
    share = (predicted == first).mean(0)  # (L, H): how often each head votes demo 1's label
    assert (share >= 0.9).mean() < 0.05, f"{int((share >= 0.9).sum())} of {share.size} heads"


@pytest.fixture(scope="module")
def gptj_style_tokenizer():
    """A byte-level BPE tokenizer like GPT-J's: adds no BOS, `<|endoftext|>` its only special token."""
    text = PromptBuilder(load_task("sst2")).render(DEMOS, ("what a ride",))[0]
    return byte_level_tokenizer([text] * 20, vocab_size=600)


def test_gptj_style_prompt_spans_exclude_the_preamble_and_capture_matches_eager(gptj_style_tokenizer, tiny_gptj):
    tok = gptj_style_tokenizer
    prompt = PromptBuilder(load_task("sst2"), tokenizer=tok).build(DEMOS, ("what a ride",))
    assert prompt.token_ids[0] == tok.convert_tokens_to_ids("<|endoftext|>") and prompt.preamble_span == (0, 1)
    assert min(s[0] for s in prompt.x_spans + prompt.y_spans) == 1
    assert [tok.decode(prompt.token_ids[slice(*s)]).strip() for s in prompt.y_spans] == ["positive", "negative",
                                                                                          "positive"]
    ids = torch.tensor([prompt.token_ids])
    position = torch.tensor([prompt.prediction_position])
    with torch.inference_mode(), capture_attention(tiny_gptj, position) as cap:
        tiny_gptj(input_ids=ids)
    rows = cap.rows()
    torch.testing.assert_close(rows, eager_rows(tiny_gptj, ids, torch.ones_like(ids), position), atol=1e-5, rtol=0)
    summary = demo_attention_summary(rows[0].numpy(), list(zip(prompt.x_spans, prompt.y_spans)))
    total = summary[..., 0].astype(np.float32).sum(-1) + span_attention_mass(rows[0].numpy(), prompt.preamble_span)
    assert np.all(total <= 1.0 + 1e-2)  # the preamble and the demo inputs are disjoint parts of one softmax row
