"""The forward against the machine's limit: matmul peak (float32, bfloat16) at the model's shapes, the forward's
achieved FLOP/s and their ratio; then the dtype gate: bfloat16 against float32 on the studies' own conditions.

1. Peak: F.linear (the op and weight layout of nn.Linear) at the shapes the model's forward runs (tokens x hidden by
   hidden x {q/k/v/o, MLP}) and a square 1024 product, in both dtypes, best of --peak-repeats: the most this
   machine's BLAS delivers at those sizes. The largest float32 figure is the peak the forward is measured against.
2. Forward: LMRunner.score on real prompts (SST-2 validation queries, k random train demonstrations), FLOPs counted
   by torch's FlopCounterMode, time per prompt and achieved GFLOP/s, as a share of the float32 peak.
3. The gate (issue 32), per experiment config (configs/experiments/dtype_gate/: random and knn, k=8, 300 queries,
   attention captured): the plan made once, scored by a float32 and a bfloat16 LMRunner chunk by chunk, alternating
   in this process. It prints the speed ratio, the share of flipped predictions, the largest log-prob difference,
   the paired accuracy difference with its bootstrap CI (queries as clusters), and per run the best head chosen in
   each dtype (70% of the queries, seed 0) with its held-out reconstruction agreement; then the verdict: a study
   may run bfloat16 for this model and task only where flips <= 2%, the accuracy CI lies within +-2 points, every
   run keeps its best head and no agreement moves by more than 0.03. --write keeps it in
   benchmarks/results/dtype_gate/MODEL-TASK.json, the file the studies' dtype rests on.

The CPU's bfloat16 support (AMX, AVX512-BF16) decides whether bfloat16 can be fast: without it torch emulates the
matmuls and bfloat16 is slower. The script prints the flags it found.

    python benchmarks/bench_forward.py --model smollm2-135m --write    # peak, then the gate on SST-2 and AG News
    python benchmarks/bench_forward.py --model gemma3-270m --skip-peak --write
    python benchmarks/bench_forward.py --skip-bfloat16 --explore threads compile   # the levers on float32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import DATA, ROOT, interleave, machine, print_machine, print_table, timing_rows

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


def forward_vs_peak(runner: LMRunner, peak: float, args: argparse.Namespace) -> None:
    """The float32 forward on SST-2 prompts with k random demonstrations: time per prompt and achieved GFLOP/s as a
    share of the float32 matmul peak measured above."""
    prompts, _, conts = prompts_for("sst2", runner, args.n_queries, args.k, args.seed)
    chunks = [prompts[s : s + args.batch_size] for s in range(0, len(prompts), args.batch_size)]
    timings, _ = interleave({"float32": lambda c: log_probs(runner, chunks[c], conts)}, len(chunks), args.repeats)
    achieved = forward_flops(runner, prompts, conts) / timings["float32"].best / 1e9
    print(f"\nforward: {1000 * timings['float32'].best / len(prompts):.0f} ms per prompt (mean "
          f"{np.mean([len(p) for p in prompts]):.0f} tokens), {achieved:.1f} GFLOP/s = {achieved / peak:.2f} of the "
          f"float32 matmul peak ({peak:.1f} GFLOP/s)")


def log_probs(runner: LMRunner, prompts: list, continuations: list) -> np.ndarray:
    return np.stack([s.log_probs for s in runner.score(prompts, continuations)])


# The gate (issue 32): a study may run a model and task in bfloat16 only where, on that task, bfloat16 against
# float32 flips at most 2% of the predictions, the paired accuracy difference's 95% CI lies within +-2 points, every
# run chooses the same best head, and each run's held-out reconstruction agreement moves by at most 0.03.
GATE = {"max_flip_share": 0.02, "max_accuracy_ci": 0.02, "max_agreement_diff": 0.03}
GATE_DIR = ROOT / "benchmarks" / "results" / "dtype_gate"
GATE_CONFIGS = ROOT / "configs" / "experiments" / "dtype_gate"


def scored_runs(config_path: Path, model: str, runners: dict[str, LMRunner], args: argparse.Namespace) -> dict:
    """The experiment's plan scored by each runner, chunk by chunk alternating (timings), assembled into runs."""
    from retrieval_icl.experiment.assemble import assemble_runs
    from retrieval_icl.experiment.compare import build_indexes, prepare_inputs
    from retrieval_icl.experiment.compare_config import load_compare_config
    from retrieval_icl.experiment.plan import plan_compare, score_requests

    config = load_compare_config(config_path, model=model)
    inputs = prepare_inputs(config)
    indexes, _ = build_indexes(config, inputs)
    plans = plan_compare(config, inputs, indexes, runners["float32"])
    requests = score_requests(plans, config)
    chunks = [(r, s) for r, req in enumerate(requests) for s in range(0, len(req.prompts), args.batch_size)]

    def score(runner: LMRunner, c: int) -> list:
        r, s = chunks[c]
        req = requests[r]
        return runner.score(req.prompts[s : s + args.batch_size], req.continuations, req.capture_attention)

    contenders = {dt: (lambda c, r=r: score(r, c)) for dt, r in runners.items()}
    timings, results = interleave(contenders, len(chunks), args.repeats)
    runs = {}
    for dt, per_chunk in results.items():
        answers = [[] for _ in requests]
        for (r, _), scored in zip(chunks, per_chunk):
            answers[r].extend(scored)
        runs[dt] = assemble_runs(plans, answers, inputs.task.name, inputs.queries, config.calibrate)
    return {"config": config, "runs": runs, "timings": timings,
            "tokens": float(np.mean([len(p) for req in requests for p in req.prompts]))}


def best_head(run) -> tuple[tuple[int, int], float]:
    """The run's best head (chosen on 70% of its queries, seed 0) and its held-out agreement with the raw prediction."""
    from retrieval_icl.analysis.attention import HeadReconstruction
    from retrieval_icl.analysis.votes import class_votes
    from retrieval_icl.lm.attention_summary import Y_MASS

    records = run.records
    weights = [run.attention[str(r.query_id)][..., Y_MASS] for r in records]  # each (L, H, D)
    votes = class_votes(weights, [r.demo_labels for r in records], len(records[0].label_log_probs))
    rec = HeadReconstruction(0.7, None, 0).fit(votes, [r.raw_prediction for r in records], [r.gold for r in records],
                                               [r.query_id for r in records])
    return rec.best_head_, rec.heldout_["agreement"]["value"]


def gate_figures(found: dict) -> dict:
    """bfloat16 against float32 on the same plan: speed, flips, log-probs, paired accuracy, best heads; the verdict."""
    from retrieval_icl.stats import paired_bootstrap_ci

    f32, bf16 = found["runs"]["float32"], found["runs"]["bfloat16"]
    pairs = [(a, b) for ra, rb in zip(f32, bf16) for a, b in zip(ra.records, rb.records)]
    lp = np.abs(np.array([np.subtract(a.label_log_probs, b.label_log_probs) for a, b in pairs]))
    flips = float(np.mean([a.raw_prediction != b.raw_prediction for a, b in pairs]))
    diff = paired_bootstrap_ci([b.raw_correct for _, b in pairs], [a.raw_correct for a, _ in pairs],
                               clusters=np.array([a.query_id for a, _ in pairs]))
    heads = {}
    for ra, rb in zip(f32, bf16):
        if ra.attention:
            (ha, ga), (hb, gb) = best_head(ra), best_head(rb)
            heads[ra.id.name] = {"float32": {"head": f"L{ha[0]}H{ha[1]}", "agreement": ga},
                                 "bfloat16": {"head": f"L{hb[0]}H{hb[1]}", "agreement": gb},
                                 "same_head": ha == hb, "agreement_diff": gb - ga}
    timings = found["timings"]
    checks = {"flips": flips <= GATE["max_flip_share"],
              "accuracy_ci": -GATE["max_accuracy_ci"] <= diff["ci_low"] and diff["ci_high"] <= GATE["max_accuracy_ci"],
              "same_best_head": all(h["same_head"] for h in heads.values()),
              "agreement": all(abs(h["agreement_diff"]) <= GATE["max_agreement_diff"] for h in heads.values())}
    return {"speed_ratio": timings["float32"].median / timings["bfloat16"].median,
            "float32_seconds": timings["float32"].median, "bfloat16_seconds": timings["bfloat16"].median,
            "n_predictions": len(pairs), "flip_share": flips, "max_log_prob_diff": float(lp.max()),
            "accuracy_float32": float(np.mean([a.raw_correct for a, _ in pairs])),
            "accuracy_bfloat16": float(np.mean([b.raw_correct for _, b in pairs])),
            "accuracy_diff": diff, "best_heads": heads, "gate": GATE, "checks": checks,
            "passes": all(checks.values()) and bool(heads)}


def run_gate(config_path: Path, runners: dict[str, LMRunner], args: argparse.Namespace) -> dict:
    """The gate on one experiment config: printed, and written to benchmarks/results/dtype_gate/MODEL-TASK.json."""
    found = scored_runs(config_path, args.model, runners, args)
    config, figures = found["config"], gate_figures(found)
    d = figures["accuracy_diff"]
    print(f"\n## gate: {args.model} on {config.task} ({config_path}), {figures['n_predictions']} predictions, mean "
          f"{found['tokens']:.0f} prompt tokens, attention captured: {config.capture_attention}\n")
    print_table(timing_rows(found["timings"], "float32", per=figures["n_predictions"], unit="prompt"))
    print(f"\nspeed ratio (float32 / bfloat16 median): {figures['speed_ratio']:.2f}x; flipped predictions "
          f"{figures['flip_share']:.2%}; max |log-prob diff| {figures['max_log_prob_diff']:.3f}; accuracy bfloat16 - "
          f"float32 {d['value']:+.4f} [95% CI {d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
    for run, h in figures["best_heads"].items():
        print(f"- {run}: best head float32 {h['float32']['head']} (agreement {h['float32']['agreement']:.3f}), "
              f"bfloat16 {h['bfloat16']['head']} ({h['bfloat16']['agreement']:.3f}): "
              f"{'same head' if h['same_head'] else 'DIFFERENT head'}")
    print(f"gate {GATE}: {figures['checks']} -> {'PASS: bfloat16 allowed' if figures['passes'] else 'FAIL: float32'}")
    shown = config_path.resolve().relative_to(ROOT) if config_path.resolve().is_relative_to(ROOT) else config_path
    out = {"model": args.model, "task": config.task, "config": str(shown), "machine": machine(),
           "cpu_bfloat16_flags": cpu_bfloat16_flags(), "mean_prompt_tokens": found["tokens"], **figures}
    if args.write:
        GATE_DIR.mkdir(parents=True, exist_ok=True)
        path = GATE_DIR / f"{args.model}-{config.task}.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return out


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
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-queries", type=int, default=32, help="prompts of the levers (--explore)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gate", nargs="*", type=Path,
                        default=[GATE_CONFIGS / "sst2.yaml", GATE_CONFIGS / "agnews.yaml"],
                        help="experiment configs the gate runs in both dtypes (default: SST-2 and AG News)")
    parser.add_argument("--write", action="store_true", help="write each gate to benchmarks/results/dtype_gate/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-repeats", type=int, default=30, help="repeats per matmul shape (best kept)")
    parser.add_argument("--explore", nargs="*", default=[], choices=["threads", "compile"],
                        help="also time these levers on the float32 forward (compile: a few minutes on 2 cores)")
    parser.add_argument("--skip-bfloat16", action="store_true", help="only the peak and the levers")
    parser.add_argument("--skip-peak", action="store_true", help="no matmul peak (the gate alone)")
    args = parser.parse_args()
    print_machine()
    print(f"torch threads {torch.get_num_threads()}; CPU bfloat16 flags: {cpu_bfloat16_flags() or 'none'}")
    dtypes = ("float32",) if args.skip_bfloat16 else ("float32", "bfloat16")
    runners = {dt: LMRunner(args.model, batch_size=args.batch_size, device="cpu", dtype=dt).load() for dt in dtypes}
    if not args.skip_peak:
        tokens = args.batch_size * 200  # a batch of main-job prompts
        print(f"\n## matmul peak at {args.model}'s shapes ({tokens} tokens), best of {args.peak_repeats}\n")
        peaks = peak_rows(runners["float32"].loaded.model.config, tokens, repeats=args.peak_repeats)
        print_table(peaks)
        forward_vs_peak(runners["float32"], max(r["float32 GFLOP/s"] for r in peaks), args)
    if args.explore:
        explore(runners["float32"], args)
    for config_path in [] if args.skip_bfloat16 else args.gate:
        run_gate(config_path, runners, args)


if __name__ == "__main__":
    main()
