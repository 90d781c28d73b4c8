"""Label scoring: LMRunner (one prompt pass per query) vs the common approach (one full pass per label per query).

The common approach, as popular ICL toolkits do it: for every (query, label) pair one forward pass over
prompt + label, logits at every position, log_softmax over the whole (batch, T, vocab) block, then the label
tokens' log-probs gathered and summed. Ours: one forward over the prompt with logits only at the last prompt
token; a multi-token label's remaining tokens go through the prompt's shared KV cache.

Both score the same AG News prompts (4 labels, k random demonstrations each) with the packaged SmolLM2-135M on
CPU float32, in the same process, alternating. Checks: predictions identical and log-probs equal within 1e-4.
FLOPs come from torch's FlopCounterMode on one batch of each.

    python benchmarks/bench_scoring.py                        # ~5 minutes on 2 shared CPU cores
    python benchmarks/bench_scoring.py --n-queries 100 --k 8 --repeats 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
from common import DATA, interleave, print_machine, print_table, timing_rows

from retrieval_icl.data.examples import Example, sample_examples
from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.lm.prompts import PromptBuilder
from retrieval_icl.lm.runner import LMRunner


def common_approach(model: torch.nn.Module, pad_id: int, prompts: Sequence[Sequence[int]],
                    continuations: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
    """(n_prompts, n_labels) summed label log-probs, one full forward per (prompt, label) pair."""
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(continuations))]
    pairs.sort(key=lambda p: -(len(prompts[p[0]]) + len(continuations[p[1]])))  # longest first, as toolkits batch
    out = np.zeros((len(prompts), len(continuations)))
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            rows = [list(prompts[i]) + list(continuations[j]) for i, j in chunk]
            for (i, j), value in zip(chunk, _full_pass(model, pad_id, rows, [len(prompts[i]) for i, _ in chunk])):
                out[i, j] = value
    return out


def _full_pass(model: torch.nn.Module, pad_id: int, rows: list[list[int]], prompt_lens: list[int]) -> list[float]:
    """Summed log-prob of each row's tokens after its prompt, from full-sequence logits."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)  # (b, T, V)
    values = []
    for b, (r, n) in enumerate(zip(rows, prompt_lens)):
        positions = torch.arange(n - 1, len(r) - 1)
        values.append(float(logp[b, positions, torch.tensor(r[n:])].double().sum()))
    return values


def ours(runner: LMRunner, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> np.ndarray:
    return np.stack([s.log_probs for s in runner.score(prompts, continuations)])


def build_prompts(runner: LMRunner, n_queries: int, k: int, label_format: str, seed: int) -> tuple[list, list, list]:
    """AG News test queries with k random train demonstrations each: token ids, gold labels, label continuations."""
    task = load_task("agnews")
    pool = load_examples(task, "train", DATA)
    queries = sample_examples(load_examples(task, "test", DATA), n_queries, seed)
    builder = PromptBuilder(task, label_format, runner.tokenizer, context_length=runner.context_length)
    rng = np.random.default_rng(seed)
    demos: list[list[Example]] = [[pool[i] for i in rng.choice(len(pool), k, replace=False)] for _ in queries]
    prompts = [builder.build(d, q.texts).token_ids for d, q in zip(demos, queries)]
    continuations = runner.label_continuations(builder.label_words, task.template.label_prefix)
    return prompts, [q.label for q in queries], continuations


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_format(runner: LMRunner, args: argparse.Namespace, label_format: str) -> dict:
    prompts, gold, conts = build_prompts(runner, args.n_queries, args.k, label_format, args.seed)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # the runner's own batching, done up front
    chunks = [[prompts[i] for i in order[s : s + args.batch_size]] for s in range(0, len(order), args.batch_size)]
    model, pad = runner.loaded.model, runner.tokenizer.pad_token_id
    contenders = {"common (pass per label)": lambda c: common_approach(model, pad, chunks[c], conts, args.batch_size),
                  "ours (LMRunner.score)": lambda c: ours(runner, chunks[c], conts)}
    timings, results = interleave(contenders, len(chunks), args.repeats)
    base, mine = (np.concatenate(r)[np.argsort(order)] for r in results.values())
    few = chunks[-1][:2]  # FLOPs on two prompts: the ratio does not depend on how many
    flop_base = count_flops(lambda: common_approach(model, pad, few, conts, args.batch_size))
    flop_ours = count_flops(lambda: ours(runner, few, conts))
    print(f"\n## AG News, label format {label_format!r} (label tokens {[len(c) for c in conts]}), "
          f"{len(prompts)} queries, k={args.k}, mean prompt {np.mean([len(p) for p in prompts]):.0f} tokens, "
          f"batch {args.batch_size}, {args.repeats} repeats\n")
    print_table(timing_rows(timings, "common (pass per label)", per=len(prompts), unit="query"))
    diff = float(np.abs(base - mine).max())
    acc = [float(np.mean(r.argmax(1) == np.array(gold))) for r in (base, mine)]
    print(f"\nmax |log-prob diff| = {diff:.2e} (limit 1e-4); predictions identical: "
          f"{bool((base.argmax(1) == mine.argmax(1)).all())}; accuracy common {acc[0]:.3f}, ours {acc[1]:.3f}; "
          f"matmul FLOPs for two prompts: common {flop_base / 1e9:.0f} G, ours {flop_ours / 1e9:.0f} G "
          f"(ratio {flop_base / flop_ours:.2f})")
    t_base, t_ours = timings.values()
    return {"format": label_format, "speedup": t_base.median / t_ours.median, "best": t_base.best / t_ours.best,
            "max_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-queries", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="demonstrations per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the queries (chunks alternate)")
    parser.add_argument("--formats", nargs="+", default=["default", "numbers"],
                        help="AG News label formats: default is one token per label, numbers two")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print_machine()
    runner = LMRunner("smollm2-135m", batch_size=args.batch_size, device="cpu", dtype="float32").load()
    summary = [bench_format(runner, args, fmt) for fmt in args.formats]
    print("\nsummary: " + "; ".join(f"{s['format']}: {s['speedup']:.2f}x (best-of {s['best']:.2f}x), "
                                    f"max diff {s['max_diff']:.1e}" for s in summary))


if __name__ == "__main__":
    main()
