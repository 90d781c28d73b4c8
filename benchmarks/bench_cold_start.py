"""Cold start of the README main job: the old path against the new, each from empty caches, in one run.

Each contender runs `python -m retrieval_icl compare configs/experiments/sst2_knn_vs_random.yaml` as a newcomer's
first run would: in its own process, with a fresh RICL_CACHE_DIR (no cached embeddings, no converted model, no ONNX
export) and a fresh index_root and output_dir, so the 67k-phrase SST-2 pool is embedded and the GGUF model converted
from scratch. Contenders differ only in the config keys given with --contender NAME=key:value,... (default: the
main job with the encoder on torch, as it ran before, against the job as shipped, on ONNX Runtime). --rounds 2
runs A B, then B A.

Printed per run: wall time, peak RSS of the process, the run's own phase timings (run_info.json: index = embedding
the pool, model_load, plan, score = the LM forward, assemble) and accuracy per selector; then each contender's
median wall time over the first's, and how many of its knn selections equal the first contender's.

    python benchmarks/bench_cold_start.py                  # ~15 min on 2 CPU cores (two cold main jobs)
    python benchmarks/bench_cold_start.py --n-queries 20   # a smoke test (the pool is still embedded in full)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import yaml
from common import DATA, ROOT, print_machine, print_table

from retrieval_icl.record import RunRecord
from retrieval_icl.results_dir import load_results

CONFIG = ROOT / "configs" / "experiments" / "sst2_knn_vs_random.yaml"
DEFAULT_CONTENDERS = ["torch=encoder_backend:torch", "onnx=encoder_backend:onnx"]


def parse_contender(text: str) -> tuple[str, dict]:
    """NAME=key:value,key:value -> (NAME, {key: value}); values are read as YAML scalars."""
    name, _, spec = text.partition("=")
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition(":")
        if not sep:
            raise SystemExit(f"--contender {text!r}: expected key:value pairs after NAME=, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def run_cold(name: str, overrides: dict, n_queries: int | None, scratch: Path) -> dict:
    """One main job from empty caches in a child process: wall time, peak RSS, phase timings, accuracy, records."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    config = yaml.safe_load(CONFIG.read_text()) | {"data_dir": str(DATA), "index_root": str(work / "indexes"),
                                                    "output_dir": str(work / "results")} | overrides
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "retrieval_icl", "compare", str(work / "config.yaml"), "--overwrite"]
    command += ["--n-queries", str(n_queries)] if n_queries else []
    env = os.environ | {"RICL_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = child.communicate()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"[{name}] the main job failed ({child.returncode}):\n{stderr[-3000:]}")
    info = json.loads((work / "results" / "run_info.json").read_text())
    return {"name": name, "wall": wall, "info": info, "records": load_results(work / "results").records}


def accuracy(records: list[RunRecord], selector: str) -> float:
    mine = [r.correct for r in records if r.selector == selector]
    return sum(mine) / len(mine)


def knn_selections(records: list[RunRecord]) -> dict[int, list[int]]:
    return {r.query_id: r.demo_ids for r in records if r.selector == "knn"}


def run_row(run: dict) -> dict:
    info = run["info"]
    return {"contender": run["name"], "wall s": round(run["wall"], 1), "peak RSS MB": round(info["peak_rss_mb"]),
            **{f"{phase} s": round(seconds, 1) for phase, seconds in info["timings"].items()},
            **{f"acc {s}": accuracy(run["records"], s) for s in ("random", "knn")}}


def summary_rows(runs: list[dict], names: list[str]) -> list[dict]:
    """Per contender: median wall time, its ratio to the first contender's, knn selections equal to the first's."""
    walls = {n: median(r["wall"] for r in runs if r["name"] == n) for n in names}
    base = knn_selections(next(r for r in runs if r["name"] == names[0])["records"])
    rows = []
    for name in names:
        mine = knn_selections(next(r for r in runs if r["name"] == name)["records"])
        same = sum(mine[q] == base[q] for q in base) / len(base)
        rows.append({"contender": name, "median wall s": round(walls[name], 1),
                     "wall / first": round(walls[name] / walls[names[0]], 3),
                     "speed-up": round(walls[names[0]] / walls[name], 2), "knn selections as first": f"{same:.1%}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", action="append", help="NAME=key:value,... config overrides; repeatable "
                        f"(default: {' '.join(DEFAULT_CONTENDERS)}); the first is the baseline")
    parser.add_argument("--rounds", type=int, default=1, help="1: A B; 2: A B, then B A")
    parser.add_argument("--n-queries", type=int, help="override the job's 200 queries")
    args = parser.parse_args()
    contenders = [parse_contender(c) for c in args.contender or DEFAULT_CONTENDERS]
    names = [n for n, _ in contenders]
    print_machine()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ricl-cold-") as scratch:
        for round_ in range(args.rounds):
            for name, overrides in contenders if round_ % 2 == 0 else contenders[::-1]:
                runs.append(run_cold(name, overrides, args.n_queries, Path(scratch)))
                print(f"[{name}] round {round_ + 1}: {runs[-1]['wall']:.1f} s", flush=True)
    print("\n## each run (timings: the run's own phases, run_info.json)\n")
    print_table([run_row(r) for r in runs])
    print("\n## cold start, old path against new\n")
    print_table(summary_rows(runs, names))


if __name__ == "__main__":
    main()
