"""What capture keeps of an attention row (numpy, no torch): per demonstration the mass and max on x_i and y_i, the
preamble's mass, and a per-token profile. The layouts are defined here once; the analyses read them from here.

    summary = demo_attention_summary(row, spans)        # row: (layers, heads, T) -> (layers, heads, demos, 5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import RiclError

# Last axis of demo_attention_summary. pre_label: attention on the token just before y_i (the end of "Output:"),
# the demonstration's own prediction position; it gives the head-feature kernel exp(q(x) . k(x_i) / sqrt(d)).
SUMMARY_COLUMNS = ("x_mass", "y_mass", "x_max", "y_max", "pre_label")
X_MASS, Y_MASS, X_MAX, Y_MAX, PRE_LABEL = range(5)
N_SUMMARY_COLUMNS = len(SUMMARY_COLUMNS)
# demo_attention_profile: each demonstration's tokens cut into regions, each resampled to a fixed number of bins.
PROFILE_REGIONS = (("x", 16), ("separator", 4), ("y", 2), ("demo_separator", 2))


def demo_attention_summary(row: np.ndarray, spans: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> np.ndarray:
    """Per demo, attention mass and max in its x and y spans, and on the token before y:
    (layers, heads, n_demos, 5) float16."""
    row = np.asarray(row, dtype=np.float32)  # (layers, heads, T)
    if row.ndim != 3:
        raise RiclError(f"row must have shape (layers, heads, T), got {row.shape}.")
    out = np.zeros((*row.shape[:2], len(spans), len(SUMMARY_COLUMNS)), dtype=np.float32)
    for i, (x_span, y_span) in enumerate(spans):
        x = row[..., _checked_slice(x_span, row.shape[-1], i)]
        y = row[..., _checked_slice(y_span, row.shape[-1], i)]
        pre = row[..., int(y_span[0]) - 1]
        out[:, :, i] = np.stack([x.sum(-1), y.sum(-1), x.max(-1), y.max(-1), pre], axis=-1)
    return out.astype(np.float16)


def span_attention_mass(row: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """Attention mass on one token span (e.g. the preamble) per layer and head: (layers, heads) float16."""
    row = np.asarray(row, dtype=np.float32)  # (layers, heads, T)
    return row[..., _checked_slice(span, row.shape[-1], -1)].sum(-1).astype(np.float16)


def demo_attention_profile(row: np.ndarray, spans: Sequence[tuple[tuple[int, int], tuple[int, int]]],
                           query_start: int) -> np.ndarray:
    """Attention per token over each demo's regions (PROFILE_REGIONS), head-averaged: (layers, n_demos, bins) float16.

    A demo's tokens run from its x start to the next demo's x start (the query's for the last one); each region
    is resampled to its bin count by linear interpolation of the per-token attention, so demos of any length line up.
    """
    per_layer = np.asarray(row, dtype=np.float32).mean(axis=1)  # (layers, T)
    ends = [x for (x, _), _ in spans[1:]] + [query_start]
    bins = sum(n for _, n in PROFILE_REGIONS)
    out = np.zeros((per_layer.shape[0], len(spans), bins), dtype=np.float32)
    for i, (((x0, x1), (y0, y1)), end) in enumerate(zip(spans, ends)):
        bounds = [(x0, x1), (x1, y0), (y0, y1), (y1, max(end, y1 + 1))]
        out[:, i] = np.concatenate([_resample(per_layer[:, a:max(b, a + 1)], n) for (a, b), (_, n) in
                                    zip(bounds, PROFILE_REGIONS)], axis=-1)
    return out.astype(np.float16)


def _resample(values: np.ndarray, n: int) -> np.ndarray:
    """(layers, m) -> (layers, n) by linear interpolation over positions in [0, 1]."""
    m = values.shape[-1]
    if m == 1:
        return np.repeat(values, n, axis=-1)
    src, dst = np.linspace(0, 1, m), np.linspace(0, 1, n)
    return np.stack([np.interp(dst, src, v) for v in values])


def _checked_slice(span: tuple[int, int], length: int, demo: int) -> slice:
    """A non-empty [start, end) span inside a row of `length` tokens, as a slice."""
    start, end = int(span[0]), int(span[1])
    if not 0 <= start < end <= length:
        raise RiclError(f"demo {demo}: span {span} is not a non-empty [start, end) range inside 0..{length}.")
    return slice(start, end)


def checked_summaries(path: object, arrays: dict[str, np.ndarray], demos: Sequence[tuple[str, int]],
                      preamble_per_query: bool = True) -> dict[str, np.ndarray]:
    """`arrays` (a run's attention, read from `path`) once each (query key, number of demonstrations) in `demos` has
    its (L, H, n_demos, 5) summary and, with preamble_per_query, its "<key>/preamble" (L, H) mass, all of one (L, H);
    else a RiclError naming the file and the entry."""
    shapes = set()
    for key, n in demos:
        if key not in arrays:
            raise RiclError(f"{path}: no entry for query {key} (expected one per record of the run)")
        shape = arrays[key].shape
        if len(shape) != 4 or shape[2:] != (n, N_SUMMARY_COLUMNS):
            raise RiclError(f"{path}: entry {key} has shape {shape}, "
                            f"expected (layers, heads, {n}, {N_SUMMARY_COLUMNS})")
        preamble = arrays.get(f"{key}/preamble") if preamble_per_query else shape[:2]
        if preamble is None or getattr(preamble, "shape", preamble) != shape[:2]:
            raise RiclError(f"{path}: entry {key}/preamble is {'missing' if preamble is None else preamble.shape}, "
                            f"expected the preamble's attention mass, shape {shape[:2]} (rerun `ricl compare`)")
        shapes.add(shape[:2])
    if len(shapes) > 1:
        raise RiclError(f"{path}: entries disagree on (layers, heads): {sorted(shapes)}")
    return arrays
