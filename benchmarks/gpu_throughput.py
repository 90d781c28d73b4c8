"""Scoring throughput of random-weight models against the matmul peak measured in the same run.

For each model shape (retrieval_icl/lm/random_models.py), on one device and dtype:

- the matmul peak: the best TFLOP/s of a square 8192 product and of F.linear at the model's own shapes (8192 tokens
  x hidden x {hidden, MLP}), CUDA-event timed, after a warm-up;
- `LMRunner.score` on random prompts of the main job's lengths (token ids, mean --mean-tokens, sd 15%) with 2
  one-token labels: at 8 rows per batch (the configs' old default), with the token budget (the default on a GPU),
  and with the token budget and attention capture;
- the plain transformers forward: unpadded batches of 32 x the mean length, logits at the last position only, no
  scoring or capture, as the ceiling the runner is measured against.

Each row gives prompts/s, useful TFLOP/s (FLOPs of the unpadded prompts, counted by torch's FlopCounterMode: a
quadratic in the length fitted at three lengths, sdpa counted as full T x T) and that rate as a share of the peak.
Timings are the best of --repeats passes after one warm-up pass.

    python benchmarks/gpu_throughput.py --throughput-shapes smollm2-135m gpt-j-6b        # on a GPU
    python benchmarks/gpu_throughput.py --device cpu --throughput-shapes tiny-gptj --n-prompts 16 --mean-tokens 40
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from retrieval_icl.lm.models import LoadedModel  # noqa: E402
from retrieval_icl.lm.random_models import random_causal_lm  # noqa: E402
from retrieval_icl.lm.runner import LMRunner  # noqa: E402

_COMPILED: set[int] = set()  # models compiled in place by `compiled`
LABELS = [[5], [6]]  # two one-token labels, as SST-2's " negative" / " positive"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warm_up: bool = True) -> float:
    """Best wall time of `repeats` calls (after one warm-up call), the device synchronised around each."""
    if warm_up:
        fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(config, device: torch.device, dtype: torch.dtype, repeats: int, size: int = 8192) -> float:
    """The best TFLOP/s of F.linear at the model's shapes (size tokens) and of a square size^3 product."""
    width = config.hidden_size
    mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * width
    best = 0.0
    for m, k, n in ((size, size, size), (size, width, width), (size, width, mlp), (size, mlp, width)):
        x, w = torch.randn(m, k, device=device, dtype=dtype), torch.randn(n, k, device=device, dtype=dtype)
        seconds = best_seconds(lambda: torch.nn.functional.linear(x, w), device, repeats)
        best = max(best, 2 * m * k * n / seconds / 1e12)
    return best


def random_prompts(n: int, mean_tokens: int, vocab: int, seed: int) -> list[list[int]]:
    """n prompts of random token ids (7 .. vocab-1), lengths normal around mean_tokens (sd 15%), at least 8."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(8, rng.normal(mean_tokens, 0.15 * mean_tokens, n).round().astype(int))
    return [rng.integers(7, vocab, size=t).tolist() for t in lengths]


def forward_flops(model, length: int) -> int:
    """FLOPs of one unpadded forward of `length` tokens with logits at the last position (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(7, model.config.get_text_config().vocab_size, (1, length), device=model.device)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # torch's sdpa FLOP formula refuses grouped-query shapes
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(input_ids=ids, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
    return counter.get_total_flops()


def useful_flops(model, lengths: Sequence[int]) -> float:
    """FLOPs of forwards over every length: a + b T + c T^2 fitted exactly at three lengths, summed over lengths."""
    points = [16, 128, 256]
    a, b, c = np.linalg.solve(np.array([[1, t, t * t] for t in points], dtype=np.float64),
                              np.array([forward_flops(model, t) for t in points], dtype=np.float64))
    t = np.asarray(lengths, dtype=np.float64)
    return float(np.sum(a + b * t + c * t * t))


def plain_forward(loaded: LoadedModel, prompts: Sequence[Sequence[int]], rows: int) -> Callable[[], None]:
    """The plain forward over the prompts cut to the mean length, `rows` per unpadded batch, last logits only."""
    width = int(np.mean([len(p) for p in prompts]))
    ids = torch.tensor([list(p[:width]) + [7] * (width - len(p)) for p in prompts], device=loaded.device)

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, len(ids), rows):
                loaded.model(input_ids=ids[start:start + rows], logits_to_keep=1)

    return run


def compiled(loaded: LoadedModel, prompts: Sequence[Sequence[int]]) -> object:
    """The token-budget runner with the model compiled in place (inductor, dynamic shapes), once."""
    if id(loaded.model) not in _COMPILED:
        loaded.model.compile(dynamic=True)
        _COMPILED.add(id(loaded.model))
    return LMRunner(loaded=loaded).score(prompts, LABELS)


def shape_rows(loaded: LoadedModel, peak: float, args: argparse.Namespace) -> list[dict]:
    """The throughput rows of one loaded model."""
    vocab = loaded.model.config.get_text_config().vocab_size
    prompts = random_prompts(args.n_prompts, args.mean_tokens, vocab, args.seed)
    scored = useful_flops(loaded.model, [len(p) for p in prompts])
    plain = useful_flops(loaded.model, [int(np.mean([len(p) for p in prompts]))] * len(prompts))
    contenders = {
        "runner, 8 rows a batch": (lambda: LMRunner(loaded=loaded, batch_size=8).score(prompts, LABELS), scored),
        "runner, token budget": (lambda: LMRunner(loaded=loaded).score(prompts, LABELS), scored),
        "runner, token budget + capture": (lambda: LMRunner(loaded=loaded).score(prompts, LABELS, True), scored),
        "plain forward, 32 x mean length": (plain_forward(loaded, prompts, 32), plain),
    }
    if "compile" in args.explore:  # last: it changes the model in place
        contenders["runner, token budget, torch.compile"] = (lambda: compiled(loaded, prompts), scored)
    budget = LMRunner(loaded=loaded).batch_limits(True)
    rows = []
    for name, (fn, flops) in contenders.items():
        if loaded.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(loaded.device)
        first = best_seconds(fn, loaded.device, 1, warm_up=False)  # the warm-up, timed apart: compiling is here
        seconds = best_seconds(fn, loaded.device, args.repeats, warm_up=False)
        memory = torch.cuda.max_memory_allocated(loaded.device) / 2**30 if loaded.device.type == "cuda" else 0.0
        rate = flops / seconds / 1e12
        rows.append({"model": loaded.name, "path": name, "prompts/s": round(len(prompts) / seconds, 1),
                     "useful TFLOP/s": round(rate, 2), "of peak": round(rate / peak, 3),
                     "peak memory GiB": round(memory, 1), "first pass s": round(first, 1),
                     "batch": f"{budget.tokens} tokens" if "budget" in name else name.split(",")[1].strip()})
    return rows


def throughput_table(shapes: Sequence[str], args: argparse.Namespace) -> list[dict]:
    """Every shape's rows, each model built, measured and freed in turn; the peak measured once per shape."""
    out = []
    for shape in shapes:
        loaded = random_causal_lm(shape, args.device, args.dtype, args.seed)
        dtype = next(loaded.model.parameters()).dtype
        peak = matmul_peak(loaded.model.config.get_text_config(), loaded.device, dtype, args.repeats, args.peak_size)
        print(f"{shape}: {str(dtype).removeprefix('torch.')} on {loaded.device}, matmul peak {peak:.1f} TFLOP/s",
              flush=True)
        out += [row | {"matmul peak TFLOP/s": round(peak, 1)} for row in shape_rows(loaded, peak, args)]
        del loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def print_rows(rows: Sequence[dict]) -> None:
    """Rows as a markdown table."""
    if not rows:
        return
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options this table takes (gpu_check.py --random-weights shares them)."""
    p.add_argument("--throughput-shapes", nargs="+", default=["smollm2-135m", "gemma3-270m", "gpt-j-6b", "llama-3-8b"])
    p.add_argument("--n-prompts", type=int, default=512)
    p.add_argument("--mean-tokens", type=int, default=190, help="the SST-2 main job's prompts average ~190 tokens")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peak-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--explore", nargs="*", default=[], choices=["compile"],
                   help="compile: also time the token-budget runner on a torch.compile'd model (compile time apart)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    add_arguments(p)
    args = p.parse_args(argv)
    print_rows(throughput_table(args.throughput_shapes, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
