"""End to end: seconds per query of `ricl compare` on SST-2, split into selection, tokenisation, forward, capture.

Runs the README's main job (configs/experiments/sst2_knn_vs_random.yaml: KATE vs random, k=8, packaged
SmolLM2-135M and all-MiniLM-L6-v2, attention capture on) on --n-queries validation queries through the real
`run_compare`, with stopwatches wrapped around its pieces from outside the library:

- selection: `Selector.select` (query embedding + search + ordering);
- tokenisation: `PromptBuilder.build` (rendering, tokenising, token spans, fitting the context);
- model forward: the model's own forward pass (torch hooks), minus the capture inside it;
- capture: `AttentionCapture.record` (inside the forward) and `.rows()`; attention summaries and profiles;
- other: the rest of the run loop (padding, label log-softmax, records, writing the results).

The index (built once and saved under indexes/, ~5 minutes the first time), model loading and the encoder's lazy
load in the first selection are set-up costs, reported apart. No baseline here: the figure is the share of time
spent outside the model forward.

    python benchmarks/bench_end_to_end.py                  # ~3 minutes on 2 CPU cores (index already built)
    python benchmarks/bench_end_to_end.py --n-queries 200  # the full main job
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import DATA, ROOT, print_machine, print_table

import retrieval_icl.experiment.assemble as assemble_module
import retrieval_icl.experiment.compare as experiment
from retrieval_icl.experiment.compare import run_compare
from retrieval_icl.experiment.compare_config import load_compare_config
from retrieval_icl.lm.capture import AttentionCapture
from retrieval_icl.lm.prompts import PromptBuilder
from retrieval_icl.lm.runner import LMRunner
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.base import Selector

SECONDS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def stopwatch(owner: Any, attribute: str, label: str) -> None:
    """Replace owner.attribute by a wrapper that adds its wall time to SECONDS[label] (outermost call only)."""
    inner = getattr(owner, attribute)
    active = [False]

    def timed(*args: Any, **kwargs: Any) -> Any:
        if active[0]:
            return inner(*args, **kwargs)
        active[0], start = True, time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SECONDS[label] += time.perf_counter() - start
            CALLS[label] += 1
            active[0] = False

    setattr(owner, attribute, timed)


def hook_model_forward(model: Any) -> None:
    """Time every top-level forward of `model` into SECONDS["forward (with capture inside)"]."""
    starts: list[float] = []
    model.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

    def done(*_: Any) -> None:
        SECONDS["forward (with capture inside)"] += time.perf_counter() - starts.pop()
        CALLS["forward (with capture inside)"] += 1

    model.register_forward_hook(done)


def instrument() -> None:
    stopwatch(Encoder, "load", "encoder load (set-up)")  # lazily, inside the first selection
    stopwatch(Selector, "select", "selection")
    stopwatch(PromptBuilder, "build", "tokenisation")
    stopwatch(AttentionCapture, "record", "capture: record (in forward)")
    stopwatch(AttentionCapture, "rows", "capture: rows")
    stopwatch(assemble_module, "demo_attention_summary", "capture: summaries")
    stopwatch(assemble_module, "demo_attention_profile", "capture: summaries")
    stopwatch(experiment, "write_results", "write results")
    load: Callable = LMRunner.load

    def load_and_hook(self: LMRunner) -> LMRunner:
        out = load(self)
        hook_model_forward(self.loaded.model)
        return out

    LMRunner.load = load_and_hook  # type: ignore[method-assign]


def breakdown(run_seconds: float, per: int) -> list[dict[str, Any]]:
    """Rows: piece, seconds, ms per query, share of the run loop."""
    forward = SECONDS["forward (with capture inside)"]
    record = SECONDS["capture: record (in forward)"]
    pieces = {"selection": SECONDS["selection"] - SECONDS["encoder load (set-up)"],
              "tokenisation": SECONDS["tokenisation"],
              "model forward (excl. capture)": forward - record, "capture: record (in forward)": record,
              "capture: rows + summaries": SECONDS["capture: rows"] + SECONDS["capture: summaries"]}
    pieces["other (padding, log-softmax, records)"] = run_seconds - sum(pieces.values())
    return [{"piece": name, "seconds": s, "ms_per_query": 1000 * s / per, "share": s / run_seconds}
            for name, s in pieces.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "experiments" / "sst2_knn_vs_random.yaml"))
    parser.add_argument("--n-queries", type=int, default=40)
    parser.add_argument("--index-root", default=str(ROOT / "indexes"), help="reuses a saved index of the pool")
    args = parser.parse_args()
    print_machine()
    instrument()
    out = Path(tempfile.mkdtemp(prefix="ricl-e2e-")) / "results"
    config = load_compare_config(args.config, n_queries=args.n_queries, data_dir=str(DATA),
                                 index_root=args.index_root, output_dir=str(out))
    start = time.perf_counter()
    rows, _, _ = run_compare(config)
    wall = time.perf_counter() - start
    info = json.loads((out / "run_info.json").read_text())
    timings = info["timings"]
    runs = [r["run"] for r in rows]
    run_seconds = (timings["plan"] + timings["score"] + timings["assemble"] + SECONDS["write results"]
                   - SECONDS["encoder load (set-up)"])
    per = args.n_queries * len(runs)
    print(f"\n## `ricl compare` {Path(args.config).name}: {args.n_queries} queries x {len(runs)} runs "
          f"({', '.join(r['run'] for r in rows)}), k={config.k}, capture on\n")
    print(f"set-up: index load {timings['index']:.1f} s, model load {timings['model_load']:.1f} s, encoder load "
          f"{SECONDS['encoder load (set-up)']:.1f} s (in the first selection); run loop "
          f"{run_seconds:.1f} s = {1000 * run_seconds / per:.0f} ms per query-run; wall {wall:.1f} s; "
          f"peak RSS {info['peak_rss_mb']:.0f} MB; accuracy "
          + ", ".join(f"{r['run']} {r['accuracy']:.3f}" for r in rows) + "\n")
    table = breakdown(run_seconds, per)
    print_table(table)
    forward = SECONDS["forward (with capture inside)"]
    model_only = forward - SECONDS["capture: record (in forward)"]
    print(f"\nshare of the run loop outside the model forward: {1 - model_only / run_seconds:.1%} (target < 10%; "
          f"capture counted outside); {1 - forward / run_seconds:.1%} outside the forward call with the capture "
          f"inside it; {CALLS['forward (with capture inside)']} forward calls")


if __name__ == "__main__":
    main()
