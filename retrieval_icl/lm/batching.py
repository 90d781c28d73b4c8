"""Cutting length-sorted sequences into padded batches: how many rows and tokens a batch may hold on a device, and
where to cut. Used by the LM runner and the ONNX sentence encoder; no torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CPU_BATCH_ROWS = 8  # rows per batch on CPU when none are given: wider batches gain nothing there
ACCELERATOR_MAX_ROWS = 1024  # a bound on the cut search; the token budget decides long before it on real prompts
# What one more forward costs, in padded tokens: a batch is cut where its padding would cost more. On CPU a fixed 32.
# On an accelerator a forward's fixed cost (kernel launches, padding and copies in Python: ~20 ms measured on an H200)
# over one token's compute (2 x parameters FLOPs at ~400 TFLOP/s): ~30k tokens for SmolLM2-135M, so its batches fill
# the token budget, but ~700 for GPT-J-6B, whose batches stay short where padding would cost compute.
CPU_BATCH_OVERHEAD_TOKENS = 32
ACCELERATOR_FORWARD_SECONDS = 0.02
ACCELERATOR_FLOPS_PER_SECOND = 4e14
FEWEST_BATCHES = 10**9


@dataclass(frozen=True)
class BatchLimits:
    """What one forward may hold: at most `rows` sequences and `tokens` padded tokens (None: no token limit), cut
    with `overhead` padded tokens charged per forward."""

    rows: int
    tokens: int | None
    overhead: int

    def cut(self, lengths: Sequence[int]) -> list[tuple[int, int]]:
        """Batches [(start, end), ...] of `lengths` (sorted longest first) within these limits."""
        return batch_bounds(lengths, self.rows, self.overhead, self.tokens)


def device_limits(on_cpu: bool, rows: int | None, tokens: int | None, auto_tokens: int | None,
                  parameters: int | None = None) -> BatchLimits:
    """The limits on a device: the rows and tokens asked for, else on CPU `CPU_BATCH_ROWS` rows and no token limit,
    elsewhere `auto_tokens` (sized from free memory) and rows bounded by tokens alone, cut by the cost of a forward
    of a model with `parameters` weights (as few batches as fit, when unknown)."""
    if on_cpu:
        return BatchLimits(rows or CPU_BATCH_ROWS, tokens, CPU_BATCH_OVERHEAD_TOKENS)
    return BatchLimits(rows or ACCELERATOR_MAX_ROWS, tokens or auto_tokens, accelerator_overhead_tokens(parameters))


def accelerator_overhead_tokens(parameters: int | None) -> int:
    """One more forward's fixed cost in padded tokens of a model with `parameters` weights (see the constants).

    >>> accelerator_overhead_tokens(135_000_000), accelerator_overhead_tokens(6_000_000_000)
    (29629, 666)
    """
    if not parameters:
        return FEWEST_BATCHES
    return int(ACCELERATOR_FORWARD_SECONDS * ACCELERATOR_FLOPS_PER_SECOND / (2 * parameters))


def batch_bounds(lengths: Sequence[int], max_rows: int, overhead: int,
                 max_tokens: int | None = None) -> list[tuple[int, int]]:
    """Contiguous batches [(start, end), ...] of lengths sorted longest first, at most max_rows each and, when
    max_tokens is given, at most max_tokens padded tokens each (a longer sequence still gets a batch of its own),
    that minimise padded tokens plus `overhead` tokens per batch (dynamic programming over the cut points).

    >>> batch_bounds([500, 300, 290, 280], max_rows=4, overhead=32)
    [(0, 1), (1, 4)]
    >>> batch_bounds([500, 300, 290, 280], max_rows=4, overhead=10**9, max_tokens=600)
    [(0, 1), (1, 2), (2, 4)]
    """
    n = len(lengths)
    size = np.asarray(lengths, dtype=np.float64)
    best = np.full(n + 1, np.inf)  # best[j]: cost of the first j rows
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        starts = np.arange(max(0, j - max_rows), j)  # the batch is rows start..j-1, padded to lengths[start]
        padded = (j - starts) * size[starts]
        cost = best[starts] + padded + overhead
        if max_tokens is not None:
            cost[(padded > max_tokens) & (starts < j - 1)] = np.inf
        pick = int(np.argmin(cost))  # on equal cost, the earliest start
        cut[j], best[j] = starts[pick], cost[pick]
    bounds, j = [], n
    while j > 0:
        bounds.append((int(cut[j]), j))
        j = int(cut[j])
    return bounds[::-1]
