"""Attention capture: the attention row of the prediction position, every layer and head, without T x T maps.

`capture_attention(model, positions)` switches the model to a registered attention function that runs the
stock sdpa kernel for the layer output and, on the side, recomputes only the query rows at `positions`
(one per batch row: with right padding the last prompt token differs per row). On exit the model's
previous attention implementation is restored, whatever happened inside the block.

    with capture_attention(model, positions) as cap:   # positions: (batch,) query index per row
        model(input_ids=ids, attention_mask=mask)
    rows = cap.rows()                                   # (batch, layers, heads, T) float32
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import RiclError
from .models import one_cpu_thread

CAPTURE_IMPLEMENTATION = "ricl_capture"

_ACTIVE: dict[int, "AttentionCapture"] = {}  # id(model.config) -> the capture recording for that model
_registered = False


class AttentionCapture:
    """Attention rows recorded during a `capture_attention` block, one per layer, float32."""

    def __init__(self, positions: torch.Tensor) -> None:
        if positions.ndim != 1 or positions.dtype not in (torch.int32, torch.int64):
            raise RiclError(f"positions must be a 1-D integer tensor (one query index per batch row), got {positions}.")
        self.positions = positions.long()  # (batch,)
        # read once here, not in every layer: on a GPU each read of a device tensor waits for the stream
        self._bounds = (int(self.positions.min()), int(self.positions.max())) if len(self.positions) else (0, -1)
        self._placed: dict[torch.device, torch.Tensor] = {}  # positions copied to each device the layers run on
        self.layers: dict[int, torch.Tensor] = {}  # layer_idx -> (batch, heads, T)

    def rows(self) -> torch.Tensor:
        """Captured rows stacked over layers: (batch, layers, heads, T) float32."""
        if not self.layers:
            raise RiclError("nothing was captured: run a forward pass inside the `with capture_attention(...)` block.")
        return torch.stack([self.layers[i] for i in sorted(self.layers)], dim=1)

    def record(self, module: Any, query: torch.Tensor, key: torch.Tensor, mask: Any, scaling: Any, kw: dict) -> None:
        """Store the softmax row of each batch row's query position for this layer."""
        batch, _, q_len, _ = query.shape  # (batch, heads, q, d)
        if self.positions.shape[0] != batch or self._bounds[1] >= q_len or self._bounds[0] < 0:
            raise RiclError(
                f"capture positions {self.positions.tolist()} do not fit a forward of batch {batch}, length {q_len}; "
                "expected one index in [0, length) per batch row."
            )
        if query.device not in self._placed:
            self._placed[query.device] = self.positions.to(query.device)
        positions = self._placed[query.device]
        causal = kw.get("is_causal", getattr(module, "is_causal", True))
        scores = _row_scores(query, key, positions, scaling)  # (batch, heads, k)
        scores = _apply_mask(scores, mask, positions, q_len, causal)
        if kw.get("position_bias") is not None:
            scores = scores + _pick_rows(kw["position_bias"], positions).float()
        self.layers[module.layer_idx] = torch.softmax(scores, dim=-1).detach()


def _row_scores(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """Scaled q.k for the chosen query rows, in float32, grouped-query aware: (batch, heads, k)."""
    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query[torch.arange(batch, device=query.device), :, positions].float()  # (batch, heads, d)
    q = q.view(batch, kv_heads, heads // kv_heads, dim)  # (batch, kv_heads, groups, d): head h uses kv head h // groups
    scores = torch.einsum("bgnd,bgkd->bgnk", q, key.float()).reshape(batch, heads, kv_len)
    return scores * (scaling if scaling is not None else dim**-0.5)


def _pick_rows(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows `positions` of a (batch|1, heads|1, q, k) mask: (batch, heads|1, k)."""
    mask = mask.expand(positions.shape[0], -1, -1, -1)
    return mask[torch.arange(positions.shape[0], device=mask.device), :, positions.to(mask.device)]


def _apply_mask(scores: torch.Tensor, mask: Any, positions: torch.Tensor, q_len: int, causal: bool) -> torch.Tensor:
    """Add the model's mask (bool keep-mask, additive float, or None meaning plain causal) to the score rows."""
    kv_len = scores.shape[-1]
    if mask is None:
        if not causal:
            return scores
        keep = torch.arange(kv_len, device=scores.device)[None, :] <= (positions + kv_len - q_len)[:, None]
        return scores.masked_fill(~keep[:, None, :], float("-inf"))
    rows = _pick_rows(mask, positions)  # (batch, heads|1, k)
    if rows.dtype == torch.bool:
        return scores.masked_fill(~rows, float("-inf"))
    return scores + rows.float()


def _capture_attention_forward(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
    dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Stock sdpa output; records the prediction rows when a capture is active for this model."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    capture = _ACTIVE.get(id(getattr(module, "config", None)))
    if capture is None and len(_ACTIVE) == 1:  # attention modules holding a sub-config
        capture = next(iter(_ACTIVE.values()))
    if capture is not None:
        with one_cpu_thread(query.device):
            capture.record(module, query, key, attention_mask, scaling, kwargs)
    return out


def _register() -> None:
    """Register the capture attention function and its (sdpa) mask format with transformers, once."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capture_attention_forward)
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)
    _registered = True


@contextmanager
def capture_attention(model: Any, positions: torch.Tensor | Sequence[int]) -> Iterator[AttentionCapture]:
    """Record, for every layer and head, the attention row of query `positions[b]` in batch row b."""
    _register()
    capture = AttentionCapture(torch.as_tensor(positions))
    key = id(model.config)
    if key in _ACTIVE:
        raise RiclError("this model is already inside a capture_attention block; nested captures are not supported.")
    previous = model.config._attn_implementation
    _ACTIVE[key] = capture
    try:
        model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
        if model.config._attn_implementation != CAPTURE_IMPLEMENTATION:
            raise RiclError(f"{type(model).__name__} cannot switch its attention function, so it cannot be captured.")
        yield capture
    finally:
        _ACTIVE.pop(key, None)
        model.set_attn_implementation(previous)
