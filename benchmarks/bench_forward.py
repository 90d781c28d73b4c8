"""The forward against the machine's limit: matmul peak (float32, bfloat16) at the model's shapes, the forward's
achieved FLOP/s and their ratio; then the forward in bfloat16 against float32, with prediction agreement.

1. Peak: F.linear (the op and weight layout of nn.Linear) at the shapes SmolLM2's forward runs (tokens x hidden by
   hidden x {q/k/v/o, MLP}) and a square 1024 product, in both dtypes, best of --peak-repeats: the most this
   machine's BLAS delivers at those sizes. The largest float32 figure is the peak the forward is measured against.
2. Forward: LMRunner.score on real prompts (SST-2 validation queries, k random train demonstrations), FLOPs counted
   by torch's FlopCounterMode, time per prompt and achieved GFLOP/s, as a share of the float32 peak.
3. bfloat16: the same prompts through LMRunner(dtype="bfloat16"), alternating with float32 in this process: the
   speed ratio, the share of identical predictions and the largest log-prob difference. Also AG News (4 labels).

The CPU's bfloat16 support (AMX, AVX512-BF16) decides whether bfloat16 can be fast: without it torch emulates the
matmuls and bfloat16 is slower. The script prints the flags it found.

    python benchmarks/bench_forward.py                      # ~3 min on 2 CPU cores with bfloat16 hardware
    python benchmarks/bench_forward.py --n-queries 8        # where bfloat16 is emulated (tens of times slower)
    python benchmarks/bench_forward.py --skip-bfloat16 --explore threads compile   # the levers on float32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import DATA, interleave, print_machine, print_table, timing_rows

from retrieval_icl.data.examples import sample_examples
from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.lm.models import cpu_bfloat16_flags
from retrieval_icl.lm.prompts import PromptBuilder
from retrieval_icl.lm.runner import LMRunner


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best-of-repeats GFLOP/s of F.linear((m, k), weight (n, k)) in `dtype`: the op and weight layout of the model's
    nn.Linear layers."""
    x, weight = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    for _ in range(3):  # warm up the kernel choice and the caches
        torch.nn.functional.linear(x, weight)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(x, weight)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def peak_rows(config, tokens: int, repeats: int) -> list[dict]:
    """GFLOP/s of the forward's matmul shapes in float32 and bfloat16."""
    d, ff = config.hidden_size, config.intermediate_size
    shapes = {"attention projection": (tokens, d, d), "MLP up": (tokens, d, ff), "MLP down": (tokens, ff, d),
              "square 1024": (1024, 1024, 1024)}
    rows = []
    for name, (m, k, n) in shapes.items():
        f32 = matmul_gflops(m, k, n, torch.float32, repeats)
        bf16 = matmul_gflops(m, k, n, torch.bfloat16, repeats if cpu_bfloat16_flags() else 2)  # emulated: slow
        rows.append({"shape": f"{name} ({m}x{k} @ {k}x{n})", "float32 GFLOP/s": round(f32, 1),
                     "bfloat16 GFLOP/s": round(bf16, 1), "bf16 / fp32": round(bf16 / f32, 2)})
    return rows


def prompts_for(task_name: str, runner: LMRunner, n: int, k: int, seed: int) -> tuple[list, list[int], list]:
    """n query prompts of the task with k random pool demonstrations: token ids, gold labels, label continuations."""
    task = load_task(task_name)
    pool = load_examples(task, task.pool_split, DATA)
    queries = sample_examples(load_examples(task, task.query_split, DATA), n, seed)
    builder = PromptBuilder(task, "default", runner.tokenizer, context_length=runner.context_length)
    rng = np.random.default_rng(seed)
    prompts = [builder.build([pool[i] for i in rng.choice(len(pool), k, replace=False)], q.texts).token_ids
               for q in queries]
    continuations = runner.label_continuations(builder.label_words, task.template.label_prefix)
    return prompts, [q.label for q in queries], continuations


def forward_flops(runner: LMRunner, prompts: list, continuations: list) -> int:
    """Matmul FLOPs of scoring these prompts (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        runner.score(prompts, continuations)
    return counter.get_total_flops()


def log_probs(runner: LMRunner, prompts: list, continuations: list) -> np.ndarray:
    return np.stack([s.log_probs for s in runner.score(prompts, continuations)])


def compare_dtypes(task: str, runners: dict[str, LMRunner], args: argparse.Namespace) -> dict:
    """float32 vs bfloat16 on one task's prompts, alternating: timings, agreement, log-prob difference."""
    prompts, gold, conts = prompts_for(task, runners["float32"], args.n_queries, args.k, args.seed)
    chunks = [prompts[s : s + args.batch_size] for s in range(0, len(prompts), args.batch_size)]
    contenders = {dt: (lambda c, r=r: log_probs(r, chunks[c], conts)) for dt, r in runners.items()}
    timings, results = interleave(contenders, len(chunks), args.repeats)
    f32, bf16 = (np.concatenate(v) for v in results.values())
    flops = forward_flops(runners["float32"], prompts, conts)
    print(f"\n## {task}: {len(prompts)} prompts, k={args.k}, mean {np.mean([len(p) for p in prompts]):.0f} tokens, "
          f"batch {args.batch_size}\n")
    print_table(timing_rows(timings, "float32", per=len(prompts), unit="prompt"))
    same = float((f32.argmax(1) == bf16.argmax(1)).mean())
    acc = [float((x.argmax(1) == np.array(gold)).mean()) for x in (f32, bf16)]
    achieved = flops / timings["float32"].best / 1e9
    print(f"\nidentical predictions {same:.3f}; max |log-prob diff| {np.abs(f32 - bf16).max():.3f}; accuracy "
          f"float32 {acc[0]:.3f}, bfloat16 {acc[1]:.3f}; float32 forward {achieved:.1f} GFLOP/s "
          f"({flops / len(prompts) / 1e9:.1f} GFLOP per prompt)")
    return {"task": task, "agreement": same, "achieved_gflops": achieved,
            "speed_bf16": timings["float32"].median / timings["bfloat16"].median}


def explore(runner: LMRunner, args: argparse.Namespace) -> None:
    """Levers on the float32 forward, each against the plain runner in this process on SST-2's prompts: one intra-op
    thread instead of all, and torch.compile (inductor; its compile time reported apart)."""
    import dataclasses

    prompts, _, conts = prompts_for("sst2", runner, args.n_queries, args.k, args.seed)
    chunks = [prompts[s : s + args.batch_size] for s in range(0, len(prompts), args.batch_size)]
    threads = torch.get_num_threads()

    def one_thread(c: int) -> np.ndarray:
        torch.set_num_threads(1)
        try:
            return log_probs(runner, chunks[c], conts)
        finally:
            torch.set_num_threads(threads)

    contenders = {f"float32, {threads} threads": lambda c: log_probs(runner, chunks[c], conts)}
    if "threads" in args.explore:
        contenders["float32, 1 thread"] = one_thread
    if "compile" in args.explore:
        model = torch.compile(runner.loaded.model, dynamic=True)
        compiled = LMRunner(runner.model, batch_size=args.batch_size, device="cpu", dtype="float32",
                            loaded=dataclasses.replace(runner.loaded, model=model))
        start = time.perf_counter()
        log_probs(compiled, chunks[0], conts)
        print(f"\ntorch.compile: first call (compilation) {time.perf_counter() - start:.1f} s")
        contenders["float32, torch.compile"] = lambda c: log_probs(compiled, chunks[c], conts)
    timings, results = interleave(contenders, len(chunks), args.repeats)
    print(f"\n## levers on the float32 forward: sst2, {len(prompts)} prompts\n")
    print_table(timing_rows(timings, next(iter(contenders)), per=len(prompts), unit="prompt"))
    base = np.concatenate(next(iter(results.values())))
    for name, r in results.items():
        print(f"- {name}: max |log-prob diff| {np.abs(np.concatenate(r) - base).max():.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-queries", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "agnews"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-repeats", type=int, default=30, help="repeats per matmul shape (best kept)")
    parser.add_argument("--explore", nargs="*", default=[], choices=["threads", "compile"],
                        help="also time these levers on the float32 forward (compile: a few minutes on 2 cores)")
    parser.add_argument("--skip-bfloat16", action="store_true", help="only the peak and the levers")
    args = parser.parse_args()
    print_machine()
    print(f"torch threads {torch.get_num_threads()}; CPU bfloat16 flags: {cpu_bfloat16_flags() or 'none'}")
    dtypes = ("float32",) if args.skip_bfloat16 else ("float32", "bfloat16")
    runners = {dt: LMRunner("smollm2-135m", batch_size=args.batch_size, device="cpu", dtype=dt).load() for dt in dtypes}
    tokens = args.batch_size * 200  # a batch of main-job prompts
    print(f"\n## matmul peak at SmolLM2's shapes ({tokens} tokens), best of {args.peak_repeats}\n")
    peaks = peak_rows(runners["float32"].loaded.model.config, tokens, repeats=args.peak_repeats)
    print_table(peaks)
    peak = max(r["float32 GFLOP/s"] for r in peaks)  # the most this BLAS gave at any of these sizes
    if args.explore:
        explore(runners["float32"], args)
    for task in [] if args.skip_bfloat16 else args.tasks:
        found = compare_dtypes(task, runners, args)
        print(f"limit ratio ({task}): the float32 forward reaches {found['achieved_gflops'] / peak:.2f} of the "
              f"float32 matmul peak ({peak:.1f} GFLOP/s); bfloat16 runs {found['speed_bf16']:.2f}x "
              f"float32's speed with {found['agreement']:.1%} identical predictions")


if __name__ == "__main__":
    main()
