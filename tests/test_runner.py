"""runner.py: label log-probs against the plain forward pass, batching, golden values, calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval_icl.errors import RiclError
from retrieval_icl.lm.batching import (
    CPU_BATCH_OVERHEAD_TOKENS,
    FEWEST_BATCHES,
    BatchLimits,
    batch_bounds,
    device_limits,
)
from retrieval_icl.lm.capture import capture_attention
from retrieval_icl.lm.models import LoadedModel, check_transformers_version
from retrieval_icl.lm.runner import LMRunner, forward_bytes_per_token, tokens_for_memory
from retrieval_icl.lm.scoring import calibrate

TEXTS = [
    "Input: a gripping, beautifully acted film\nOutput:",
    "Input: dull\nOutput:",
    "Input: great fun\nOutput: positive\n\nInput: a waste of two hours, the plot makes no sense at all\nOutput:",
    "Output:",
    "Input: fine\nOutput: positive\n\nInput: bad\nOutput:",
]
LABELS = ["positive", "negative", "very positive"]
GOLDEN = {  # log-probs of LABELS after TEXTS[0], CPU float32
    "smollm2-135m": [-11.778777, -11.371486, -16.812826],
    "gemma3-270m": [-8.130138, -10.342619, -13.627956],
}


def direct_log_probs(model, prompt: list[int], conts: list[list[int]]) -> np.ndarray:
    """Reference: one plain forward over prompt + label, log_softmax, summed over the label's tokens. Logits only
    where the label's tokens are predicted: Gemma's 262k vocabulary over every position would take GBs."""
    out = []
    with torch.inference_mode():
        for c in conts:
            where = torch.arange(len(prompt) - 1, len(prompt) + len(c) - 1)  # predicts c[0], ..., c[-1]
            logits = model(input_ids=torch.tensor([prompt + c]), logits_to_keep=where).logits[0].double()  # (m, V)
            lsm = torch.log_softmax(logits, dim=-1)
            out.append(sum(lsm[t, tok].item() for t, tok in enumerate(c)))
    return np.array(out)


def encode(runner: LMRunner, texts: list[str]) -> list[list[int]]:
    """Token ids as the tokenizer gives them by default: Gemma's start with BOS, SmolLM2's with the text."""
    return [runner.tokenizer(t)["input_ids"] for t in texts]


def test_calibrate_known_answer():
    log_probs = np.log([[0.3, 0.1, 0.1], [0.2, 0.2, 0.4]])  # label probs need not sum to 1
    content_free = np.log([0.5, 0.25, 0.25])
    got = np.exp(calibrate(log_probs, content_free))
    np.testing.assert_allclose(got[0], [1.2 / 2.8, 0.8 / 2.8, 0.8 / 2.8])
    np.testing.assert_allclose(got[1], [1 / 7, 2 / 7, 4 / 7])  # [.25, .25, .5] / [.5, .25, .25] = [.5, 1, 2]
    per_row = calibrate(log_probs, np.stack([content_free, np.log([1 / 3] * 3)]))
    np.testing.assert_allclose(np.exp(per_row[1]), [0.25, 0.25, 0.5])
    with pytest.raises(RiclError):
        calibrate(log_probs, np.zeros(2))


def test_constructor_only_stores():
    runner = LMRunner("no/such-model", batch_size=2)
    assert (runner.model, runner.batch_size) == ("no/such-model", 2)
    with pytest.raises(RiclError, match="load"):
        runner.loaded
    with pytest.raises(RiclError, match="batch_size"):
        LMRunner(batch_size=0)


class _PadOnly:
    pad_token_id = 0


def test_tiny_gptj_matches_plain_forward(tiny_gptj):
    loaded = LoadedModel(tiny_gptj, _PadOnly(), "tiny-gptj", 256, 2, 4)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 1000, (n,), generator=gen).tolist() for n in (5, 17, 9, 12)]
    conts = [[7], [8, 9, 10], [11, 12]]
    expected = np.stack([direct_log_probs(tiny_gptj, p, conts) for p in prompts])
    for share in (True, False):
        runner = LMRunner(batch_size=3, loaded=loaded, share_prompt_cache=share)
        got = np.stack([s.log_probs for s in runner.score(prompts, conts)])
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_labels_sharing_leading_tokens_match_plain_forward(tiny_gptj):
    loaded = LoadedModel(tiny_gptj, _PadOnly(), "tiny-gptj", 256, 2, 4)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 1000, (n,), generator=gen).tolist() for n in (6, 11, 8)]
    conts = [[8, 9, 10], [8, 9, 11], [8, 12], [8], [7, 9, 10]]  # one tail pass serves the first two
    expected = np.stack([direct_log_probs(tiny_gptj, p, conts) for p in prompts])
    for share in (True, False):
        runner = LMRunner(batch_size=2, loaded=loaded, share_prompt_cache=share)
        got = np.stack([s.log_probs for s in runner.score(prompts, conts)])
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert len(set(expected[0].round(3))) == len(conts)  # distinct labels, so a mixed-up memo would show


def test_batch_bounds_trade_padding_for_forwards():
    lengths = [500, 300, 290, 280, 100]
    assert batch_bounds(lengths, max_rows=4, overhead=32) == [(0, 1), (1, 4), (4, 5)]
    assert batch_bounds(lengths, max_rows=2, overhead=10**9) == [(0, 1), (1, 3), (3, 5)]  # fewest batches
    assert batch_bounds(lengths, max_rows=8, overhead=0) == [(i, i + 1) for i in range(5)]  # no padding at all
    assert batch_bounds([], max_rows=4, overhead=32) == []


@pytest.mark.lm
@pytest.mark.parametrize("words", [["positive", "negative"], ["very positive", "not at all negative", "neutral"]])
def test_label_log_probs_match_plain_forward(packaged_runner, words):
    runner = packaged_runner
    conts = runner.label_continuations(words)
    assert all(len(c) == 1 for c in conts) or sum(len(c) > 1 for c in conts) >= 2
    prompts = encode(runner, TEXTS)
    expected = np.stack([direct_log_probs(runner.loaded.model, p, conts) for p in prompts])
    got = np.stack([s.log_probs for s in runner.score(prompts, conts)])
    assert got.dtype == np.float64 and got.shape == (len(TEXTS), len(words))
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.lm
def test_multi_token_labels_are_multi_token(packaged_runner):
    conts = packaged_runner.label_continuations(["very positive", "not at all negative"])
    assert [len(c) for c in conts] == [2, 4]


@pytest.mark.lm
def test_shared_cache_equals_full_forward(packaged_runner):
    prompts = encode(packaged_runner, TEXTS)
    conts = packaged_runner.label_continuations(["very positive", "not at all negative"])
    cached = np.stack([s.log_probs for s in packaged_runner.score(prompts, conts)])
    full_forward = LMRunner(packaged_runner.model, loaded=packaged_runner.loaded, share_prompt_cache=False)
    full = np.stack([s.log_probs for s in full_forward.score(prompts, conts)])
    np.testing.assert_allclose(cached, full, atol=1e-4)


@pytest.mark.lm
def test_batched_equals_one_at_a_time(packaged_runner):
    prompts = encode(packaged_runner, TEXTS)
    conts = packaged_runner.label_continuations(LABELS)
    batched = packaged_runner.score(prompts, conts, capture_attention=True)
    packaged_runner.batch_size = 1
    try:
        single = packaged_runner.score(prompts, conts, capture_attention=True)
    finally:
        packaged_runner.batch_size = 4
    shape = (packaged_runner.loaded.n_layers, packaged_runner.loaded.n_heads)
    for b, s, p in zip(batched, single, prompts):
        np.testing.assert_allclose(b.log_probs, s.log_probs, atol=1e-4)
        assert b.attention.shape == (*shape, len(p)) and b.attention.dtype == np.float32
        np.testing.assert_allclose(b.attention, s.attention, atol=1e-5)
        np.testing.assert_allclose(b.attention.sum(-1), 1.0, atol=1e-5)


@pytest.mark.lm
def test_golden_log_probs(packaged_runner):
    conts = packaged_runner.label_continuations(LABELS)
    got = packaged_runner.score(encode(packaged_runner, TEXTS[:1]), conts)[0]
    assert got.attention is None
    np.testing.assert_allclose(got.log_probs, GOLDEN[packaged_runner.model], rtol=1e-3)


@pytest.mark.lm
def test_prompts_across_gemma3_sliding_window_match_plain_forward(gemma3_runner):
    """Right-padded batches on both sides of the 512-token window of Gemma 3's sliding layers. Label tails reuse the
    prompt's KV cache only while padded prompt + tail stays under the window: in the 509/498 batch the tail after
    " Sci/" (511 slots) does, the one after " not at all" (509 + 3 = 512) takes a full forward, as do the tails of
    the 530/520 batch, whose sliding layers already mask the first keys."""
    runner = gemma3_runner
    assert runner.loaded.model.config.sliding_window == 512
    text = encode(runner, [" ".join(TEXTS * 20)])[0]  # BOS, then ~1200 tokens of prompt text
    lengths = [530, 520, 509, 498]
    assert runner.batch_limits().cut(lengths) == [(0, 2), (2, 4)]  # as the runner cuts
    prompts = [text[:n] for n in lengths]
    conts = runner.label_continuations(["not at all negative", "Sci/Tech"])
    assert [len(c) for c in conts] == [4, 3]
    expected = np.stack([direct_log_probs(runner.loaded.model, p, conts) for p in prompts])
    got = np.stack([s.log_probs for s in runner.score(prompts, conts)])
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.lm
def test_bad_inputs_say_what_was_expected(smollm2_runner):
    conts = smollm2_runner.label_continuations(["positive"])
    with pytest.raises(RiclError, match="prompt 0 has 9000 tokens"):
        smollm2_runner.score([[1] * 9000], conts)
    with pytest.raises(RiclError, match="empty"):
        smollm2_runner.score([[1, 2]], [[]])
    with pytest.raises(RiclError, match="alike"):
        smollm2_runner.label_continuations(["positive", "positive"])


def test_batch_bounds_keep_a_token_budget():
    lengths = [500, 300, 290, 280, 100, 90]
    bounds = batch_bounds(lengths, max_rows=100, overhead=10**9, max_tokens=600)
    # the fewest batches within 600 padded tokens each (4), the least padded of those: 1580 tokens, not the greedy
    # [500] [300, 290] [280, 100] [90]'s 1750
    assert bounds == [(0, 1), (1, 2), (2, 4), (4, 6)]
    assert all((b - a) * lengths[a] <= 600 for a, b in bounds)
    assert batch_bounds([900, 10], max_rows=8, overhead=10**9, max_tokens=600) == [(0, 1), (1, 2)]  # too long: alone
    assert batch_bounds(lengths, max_rows=100, overhead=10**9) == [(0, 6)]  # no budget: one batch


def test_device_limits_keep_cpu_behaviour_and_size_accelerator_batches_by_tokens():
    assert device_limits(True, None, None, None) == BatchLimits(8, None, CPU_BATCH_OVERHEAD_TOKENS)
    assert device_limits(True, 3, 1000, 5000) == BatchLimits(3, 1000, CPU_BATCH_OVERHEAD_TOKENS)
    on_gpu = device_limits(False, None, None, 5000)
    assert on_gpu.tokens == 5000 and on_gpu.rows >= 1000 and on_gpu.overhead == FEWEST_BATCHES
    assert device_limits(False, 16, 2000, 5000) == BatchLimits(16, 2000, FEWEST_BATCHES)  # what is asked wins
    lengths = [190] * 40 + [120] * 40
    assert on_gpu.cut(lengths) == [(0, 14), (14, 40), (40, 80)]  # 3 batches of at most 5000 tokens, none mixed


def test_token_budget_batches_score_as_row_batches(tiny_gptj):
    loaded = LoadedModel(tiny_gptj, _PadOnly(), "tiny-gptj", 256, 2, 4)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 1000, (n,), generator=gen).tolist() for n in (5, 17, 9, 12, 30, 3, 22)]
    conts = [[7], [8, 9, 10]]
    by_rows = LMRunner(batch_size=2, loaded=loaded).score(prompts, conts, capture_attention=True)
    by_tokens = LMRunner(loaded=loaded, max_batch_tokens=40)
    assert by_tokens.batch_limits().tokens == 40
    got = by_tokens.score(prompts, conts, capture_attention=True)
    for a, b in zip(by_rows, got):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-6)


def test_a_batch_out_of_accelerator_memory_is_split_and_retried(tiny_gptj):
    """Fault injection: the tiny GPT-J's weights in a model whose forward raises CUDA's out-of-memory error on more
    than two rows, as a GPU would on a batch too large for it."""
    from transformers import GPTJForCausalLM

    sizes = []

    class SmallBatchesOnly(GPTJForCausalLM):
        def forward(self, input_ids=None, **kwargs):
            sizes.append(input_ids.shape[0])
            if input_ids.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return super().forward(input_ids=input_ids, **kwargs)

    faulty = SmallBatchesOnly(tiny_gptj.config).eval()
    faulty.load_state_dict(tiny_gptj.state_dict())
    prompts = [[5 + i] * (4 + i) for i in range(7)]
    conts = [[7], [8]]
    expected = LMRunner(batch_size=1, loaded=LoadedModel(tiny_gptj, _PadOnly(), "tiny-gptj", 256, 2, 4)).score(
        prompts, conts)
    got = LMRunner(batch_size=7, loaded=LoadedModel(faulty, _PadOnly(), "faulty", 256, 2, 4)).score(prompts, conts)
    assert sizes[0] == 7 and max(sizes[1:]) > 2 and sum(s for s in sizes if s <= 2) == 7  # 7 -> 3 + 4 -> ... -> 1-2s
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)


def test_transformers_floor_and_the_behaviours_the_runner_relies_on(tiny_gptj):
    """Below MIN_TRANSFORMERS the package refuses at import; at or above it, a forward returns its KV cache as
    `.cache`, a 2-D `logits_to_keep` keeps one position per row, and GPT-J can switch its attention (capture)."""
    with pytest.raises(ImportError, match=r"transformers >= 5\.24\.0, found 5\.23\.1.*pip install"):
        check_transformers_version("5.23.1")
    assert check_transformers_version("5.24.0") == "5.24.0" and check_transformers_version("5.30.0.dev0")
    ids = torch.randint(1, 1000, (3, 9), generator=torch.Generator().manual_seed(4))
    last = torch.tensor([[8], [3], [5]])
    with torch.inference_mode():
        full = tiny_gptj(input_ids=ids).logits  # (3, 9, V)
        kept = tiny_gptj(input_ids=ids, use_cache=True, logits_to_keep=last)
    assert kept.logits.shape == (3, 1, full.shape[-1])
    torch.testing.assert_close(kept.logits[:, 0], full[torch.arange(3), last[:, 0]], atol=1e-5, rtol=1e-5)
    assert type(kept.cache).__name__ == "DynamicCache" and kept.cache.get_seq_length() == 9
    with capture_attention(tiny_gptj, last[:, 0]) as cap:
        tiny_gptj(input_ids=ids)
    assert cap.rows().shape == (3, 2, 4, 9)


def test_an_accelerator_budget_is_sized_from_free_memory(tiny_gptj):
    loaded = LoadedModel(tiny_gptj, _PadOnly(), "tiny-gptj", 256, 2, 4)
    plain, captured = forward_bytes_per_token(loaded, False), forward_bytes_per_token(loaded, True)
    # float32: 4 x (8 x 64 residual + 4 x 256 MLP + 2 x 2 layers x 64 KV) + 20 x 1000 / 16 vocabulary share per token
    assert plain == 4 * (8 * 64 + 4 * 256 + 2 * 2 * 64) + 20 * 1000 // 16
    assert captured == plain + 4 * 2 * 4  # float32 rows: layers x heads per token
    assert tokens_for_memory(2**31, plain, 256) == 65536  # capped
    assert tokens_for_memory(10**8, plain, 256) == 10**8 // 2 // plain  # half the free memory
    assert tokens_for_memory(10**4, plain, 256) == 256  # never below one full context


def test_docstring_examples_hold():
    from handmade_results import doctest_failures

    from retrieval_icl.lm import batching, runner

    assert doctest_failures(batching) == doctest_failures(runner) == 0
