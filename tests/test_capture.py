"""capture.py: captured rows equal eager attention, the model is left as it was, and the demo span summary."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from retrieval_icl.errors import RiclError
from retrieval_icl.lm.attention_summary import (
    PROFILE_REGIONS,
    SUMMARY_COLUMNS,
    X_MASS,
    Y_MAX,
    demo_attention_profile,
    demo_attention_summary,
)
from retrieval_icl.lm.capture import capture_attention


def padded_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (batch, max_len) with right padding, and the mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=gen)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def eager_rows(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference rows from the eager implementation's full attention maps, in `dtype` (other than float32: on a copy
    of the model): (batch, layers, heads, T) float32."""
    reference = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    previous = reference.config._attn_implementation
    reference.set_attn_implementation("eager")
    try:
        with torch.inference_mode():  # the base model: no logits, which over Gemma's 262k vocabulary would take GBs
            maps = reference.base_model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        reference.set_attn_implementation(previous)
    return torch.stack([m[torch.arange(len(positions)), :, positions] for m in maps], dim=1).float()  # m: (b,h,T,T)


def check_capture_matches_eager(model, vocab: int, lengths: list[int],
                                reference_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Capture the rows at each row's last token of a right-padded random batch; check them against eager attention
    and the model's output against a run without capture. Returns the rows: (batch, layers, heads, T)."""
    ids, mask = padded_batch(vocab, lengths)
    positions = mask.sum(1) - 1
    with torch.inference_mode():
        plain = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        with capture_attention(model, positions) as cap:
            captured = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(captured, plain, atol=0, rtol=0)
    rows = cap.rows()
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    assert rows.shape == (len(lengths), n_layers, n_heads, max(lengths)) and rows.dtype == torch.float32
    reference = eager_rows(model, ids, mask, positions, reference_dtype)
    torch.testing.assert_close(rows, reference, atol=1e-5, rtol=0)
    return rows


def test_tiny_gptj_capture_matches_eager(tiny_gptj):
    check_capture_matches_eager(tiny_gptj, 1000, [7, 12, 3])


def test_no_padding_uses_causal_mask(tiny_gptj):
    ids, mask = padded_batch(1000, [10, 10])
    positions = torch.tensor([9, 4])  # an inner position too: keys after it must get zero weight
    with torch.inference_mode(), capture_attention(tiny_gptj, positions) as cap:
        tiny_gptj(input_ids=ids)
    torch.testing.assert_close(cap.rows(), eager_rows(tiny_gptj, ids, mask, positions), atol=1e-5, rtol=0)
    assert cap.rows()[1, :, :, 5:].abs().max() == 0


def test_implementation_restored_after_error(tiny_gptj):
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(tiny_gptj, torch.tensor([0])):
            assert tiny_gptj.config._attn_implementation != "sdpa"
            raise RuntimeError("boom")
    assert tiny_gptj.config._attn_implementation == "sdpa"


def test_bad_positions_and_empty_capture(tiny_gptj):
    with pytest.raises(RiclError, match="1-D integer"):
        capture_attention(tiny_gptj, torch.tensor([[1.0]])).__enter__()
    with capture_attention(tiny_gptj, torch.tensor([0])) as cap:
        with pytest.raises(RiclError, match="nothing was captured"):
            cap.rows()
        with pytest.raises(RiclError, match="do not fit"), torch.inference_mode():
            tiny_gptj(input_ids=torch.ones(2, 4, dtype=torch.long))
    assert tiny_gptj.config._attn_implementation == "sdpa"


@pytest.mark.lm
def test_packaged_capture_matches_eager(packaged_lm):
    check_capture_matches_eager(packaged_lm.model, packaged_lm.tokenizer.vocab_size, [9, 16, 5, 16])


@pytest.mark.lm
def test_gemma3_capture_past_the_sliding_window(gemma3):
    """Rows longer than the 512-token window: the captured rows follow each layer's own mask, so the sliding layers
    give keys 512 or more tokens back no weight while the full-attention layers still do. The eager reference runs
    in float64: on rows this long the float32 eager and sdpa forwards each drift up to ~7e-6 from it (Gemma's hidden
    states reach ~60), up to 1.3e-5 apart from each other; the capture stays within 1e-5 of float64."""
    config, lengths = gemma3.model.config, [520, 513]
    rows = check_capture_matches_eager(gemma3.model, gemma3.tokenizer.vocab_size, lengths, torch.float64)
    sliding = torch.tensor([t == "sliding_attention" for t in config.layer_types])
    assert config.sliding_window == 512 and int(sliding.sum()) == 15
    for row, n in zip(rows, lengths):
        old = row[:, :, : n - 512]  # (layers, heads, keys): the keys outside the window of the last token
        assert old[sliding].max() == 0 and old[~sliding].sum(-1).min() > 0


def test_demo_attention_summary_known_values():
    row = np.zeros((1, 2, 10), dtype=np.float32)  # (layers, heads, T)
    row[0, 0] = [0.0, 0.1, 0.2, 0.0, 0.3, 0.0, 0.1, 0.1, 0.1, 0.1]
    row[0, 1, 9] = 1.0
    spans = [((1, 3), (4, 5)), ((6, 8), (8, 9))]  # ((x_start, x_end), (y_start, y_end)), end exclusive
    out = demo_attention_summary(row, spans)
    assert out.shape == (1, 2, 2, 5) and out.dtype == np.float16 and len(SUMMARY_COLUMNS) == 5
    np.testing.assert_allclose(out[0, 0, 0], [0.3, 0.3, 0.2, 0.3, 0.0], atol=1e-3)  # pre_label: token 3
    np.testing.assert_allclose(out[0, 0, 1], [0.2, 0.1, 0.1, 0.1, 0.1], atol=1e-3)  # pre_label: token 7
    assert out[0, 1].max() == 0 and SUMMARY_COLUMNS[X_MASS] == "x_mass" and SUMMARY_COLUMNS[Y_MAX] == "y_max"
    with pytest.raises(RiclError, match="demo 0"):
        demo_attention_summary(row, [((3, 3), (4, 5))])
    with pytest.raises(RiclError, match="demo 0"):
        demo_attention_summary(row, [((1, 3), (9, 11))])


def test_demo_attention_profile_resamples_each_region():
    row = np.zeros((2, 3, 12), dtype=np.float32)  # (layers, heads, T)
    row[:, :, 5] = 0.9  # the first demo's label token, every head
    spans = [((0, 3), (5, 6)), ((7, 9), (10, 11))]  # x, then "Output:" tokens 3-4, y at 5, separator at 6
    profile = demo_attention_profile(row, spans, query_start=12)
    bins = [n for _, n in PROFILE_REGIONS]
    assert profile.shape == (2, 2, sum(bins)) and profile.dtype == np.float16
    y = slice(bins[0] + bins[1], bins[0] + bins[1] + bins[2])
    np.testing.assert_allclose(profile[:, 0, y], 0.9, atol=1e-3)
    assert profile[:, 0].sum() == pytest.approx(2 * 0.9 * 2, abs=1e-2) and profile[:, 1].max() == 0
