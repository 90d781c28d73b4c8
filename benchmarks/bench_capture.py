"""Attention capture: row capture under sdpa vs output_attentions=True under eager attention, and vs no capture.

Three contenders score the same SST-2 prompts (k random demonstrations each) with the packaged SmolLM2-135M on
CPU float32, alternating batch by batch in one process:

- "sdpa, no capture": `LMRunner.score(..., capture_attention=False)`, the floor;
- "ours: sdpa + row capture": `LMRunner.score(..., capture_attention=True)`, the prediction rows of every layer
  and head recomputed on the side of the stock sdpa kernel;
- "eager + output_attentions": the model switched to eager attention, every layer's (heads, T, T) map returned,
  the prediction rows read from them (the usual way).

Checks: captured rows equal the eager ones (max abs difference), log-probs unchanged by capture. Then the memory
a single forward adds at growing prompt lengths: ours grows like layers x heads x T, eager like layers x heads x T^2.

    python benchmarks/bench_capture.py                      # ~4 minutes on 2 shared CPU cores
    python benchmarks/bench_capture.py --n-queries 64 --lengths 256 512 1024 2048
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
from common import DATA, interleave, peak_delta_mb, print_machine, print_table, timing_rows

from retrieval_icl.data.examples import sample_examples
from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.lm.prompts import PromptBuilder
from retrieval_icl.lm.runner import LMRunner

FLOOR, OURS, EAGER = "sdpa, no capture", "ours: sdpa + row capture", "eager + output_attentions"


def eager_rows(runner: LMRunner, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Prediction rows from eager attention maps, one (layers, heads, T_i) array per prompt (sorted longest first),
    batched as the runner batches them."""
    bounds = runner.batch_limits().cut([len(p) for p in prompts])
    return [row for a, b in bounds for row in _eager_batch(runner, prompts[a:b])]


def _eager_batch(runner: LMRunner, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
    model = runner.loaded.model
    ids, mask = runner._pad(prompts)
    last = mask.sum(1) - 1  # (b,)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True, logits_to_keep=last[:, None])
    finally:
        model.set_attn_implementation(previous)
    rows = torch.stack([a[torch.arange(len(prompts)), :, last] for a in out.attentions], 1)  # (b, layers, heads, T)
    return [rows[i, :, :, : len(p)].float().numpy() for i, p in enumerate(prompts)]


def sst2_prompts(runner: LMRunner, n: int, k: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """SST-2 validation queries with k random train demonstrations each; token ids and label continuations."""
    task = load_task("sst2")
    pool = load_examples(task, "train", DATA)
    queries = sample_examples(load_examples(task, "validation", DATA), n, seed)
    builder = PromptBuilder(task, "default", runner.tokenizer, max_tokens=runner.context_length)
    rng = np.random.default_rng(seed)
    prompts = [builder.build([pool[i] for i in rng.choice(len(pool), k, replace=False)], q.texts).token_ids
               for q in queries]
    return prompts, runner.label_continuations(builder.label_words, task.template.label_prefix)


def bench_runtime(runner: LMRunner, args: argparse.Namespace) -> None:
    prompts, conts = sst2_prompts(runner, args.n_queries, args.k, args.seed)
    prompts.sort(key=len, reverse=True)
    chunks = [prompts[s : s + args.batch_size] for s in range(0, len(prompts), args.batch_size)]
    contenders = {FLOOR: lambda c: runner.score(chunks[c], conts),
                  OURS: lambda c: runner.score(chunks[c], conts, capture_attention=True),
                  EAGER: lambda c: eager_rows(runner, chunks[c])}
    timings, results = interleave(contenders, len(chunks), args.repeats)
    print(f"\n## Runtime: SST-2, {len(prompts)} queries, k={args.k}, mean prompt "
          f"{np.mean([len(p) for p in prompts]):.0f} tokens, batch {args.batch_size}, {args.repeats} repeats\n")
    print_table(timing_rows(timings, EAGER, per=len(prompts), unit="query"))
    ours = [s for chunk in results[OURS] for s in chunk]
    floor = [s for chunk in results[FLOOR] for s in chunk]
    eager = [r for chunk in results[EAGER] for r in chunk]
    row_diff = max(float(np.abs(s.attention - e).max()) for s, e in zip(ours, eager))
    lp_diff = max(float(np.abs(s.log_probs - f.log_probs).max()) for s, f in zip(ours, floor))
    t = {name: timing for name, timing in timings.items()}
    print(f"\ncapture / no capture: {t[OURS].median / t[FLOOR].median:.3f}x median, "
          f"{t[OURS].best / t[FLOOR].best:.3f}x "
          f"best (target <= 1.15); eager / ours: {t[EAGER].median / t[OURS].median:.2f}x; "
          f"max |row - eager row| = {row_diff:.2e}; max |log-prob change from capture| = {lp_diff:.2e}")


def bench_memory(runner: LMRunner, lengths: Sequence[int]) -> None:
    """Peak RSS one forward of a single prompt adds, by length, and the bytes each method returns."""
    layers, heads = runner.loaded.n_layers, runner.loaded.n_heads
    gen = torch.Generator().manual_seed(0)
    rows = []
    for T in lengths:
        prompt = torch.randint(100, 40000, (T,), generator=gen).tolist()
        _, floor = peak_delta_mb(lambda: runner.score([prompt], [[1]]))
        _, ours = peak_delta_mb(lambda: runner.score([prompt], [[1]], capture_attention=True))
        _, eager = peak_delta_mb(lambda: eager_rows(runner, [prompt]))
        rows.append({"T": T, "no_capture_peak_mb": floor, "ours_peak_mb": ours, "eager_peak_mb": eager,
                     "ours_rows_mb (L*H*T*4)": layers * heads * T * 4 / 2**20,
                     "eager_maps_mb (L*H*T^2*4)": layers * heads * T * T * 4 / 2**20})
    print(f"\n## Memory of one forward (batch 1, {layers} layers x {heads} heads): peak RSS added, and the attention "
          "held per query\n")
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-queries", type=int, default=24)
    parser.add_argument("--k", type=int, default=8, help="demonstrations per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print_machine()
    runner = LMRunner("smollm2-135m", batch_size=args.batch_size, device="cpu", dtype="float32").load()
    bench_runtime(runner, args)
    bench_memory(runner, args.lengths)


if __name__ == "__main__":
    main()
