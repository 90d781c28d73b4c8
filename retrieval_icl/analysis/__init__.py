"""Analyses over saved run records (no model): attention maps, per-head reconstruction, kernel regression,
bandwidth, label format, demonstration distribution, and the report that gathers them.

    from retrieval_icl.analysis import load_results, run_all, write_report
    results = load_results("results/sst2_reconstruction")
    run_all(results)                      # every analysis the records allow, files in results/.../analysis/
    write_report(results.directory)       # report.md + report.html

Modules: records.py (load and check a results directory), attention.py (Figure 2 map, HeadReconstruction),
kernel.py (KernelRegression, Table 2), bandwidth.py, label_format.py, distribution.py, report.py, cli.py.
"""

from __future__ import annotations

import logging
from typing import Sequence

from .records import Results, load_results
from .report import write_json, write_report

log = logging.getLogger(__name__)

__all__ = ["Results", "load_results", "applicable", "run_all", "write_report"]


def applicable(results: Results, runs: Sequence[str] | None = None) -> dict[str, str | None]:
    """Analysis name -> None if the records allow it, else the reason it is skipped."""
    from .distribution import REPRESENTATIVE

    names = list(runs) if runs else results.main_runs()
    attention = None if any(results.has_attention(r) for r in results.runs(names)) else \
        "no attention captured (capture_attention: false)"
    formats = {(r["selector"], r["seed"], r["k"], r["pool"], r["label_format"]) for r in results.records}
    varied = len(formats) > len({f[:4] for f in formats})
    reps = any(s["name"] in REPRESENTATIVE for s in results.selector_specs().values())
    return {"attention": attention, "reconstruction": attention, "kernel": None, "bandwidth": None,
            "label_format": None if varied else "every run uses a single label format",
            "distribution": None if len(results.pool_order()) > 1 or reps else
            "one demonstration pool and no representative (kmeans/votek) selector"}


def run_all(results: Results, runs: Sequence[str] | None = None, tau: float = 0.1, selection_fraction: float = 0.7,
            selection_n: int | None = None, seed: int = 0, n_bins: int = 5) -> dict[str, dict | str]:
    """Every analysis the records allow; name -> its result dict, or the reason it was skipped (also saved)."""
    from .attention import analyze_attention, analyze_reconstruction
    from .bandwidth import analyze_bandwidth
    from .distribution import analyze_distribution
    from .kernel import analyze_kernel
    from .label_format import analyze_label_format

    split = {"selection_fraction": selection_fraction, "selection_n": selection_n, "seed": seed}
    steps = {"attention": lambda: analyze_attention(results, runs),
             "reconstruction": lambda: analyze_reconstruction(results, runs, **split),
             "kernel": lambda: analyze_kernel(results, runs, tau=tau, **split),
             "bandwidth": lambda: analyze_bandwidth(results, n_bins=n_bins, **split),
             "label_format": lambda: analyze_label_format(results, **split),
             "distribution": lambda: analyze_distribution(results)}
    done: dict[str, dict | str] = {}
    for name, reason in applicable(results, runs).items():
        if reason is None:
            log.info("analysis %s", name)
            done[name] = steps[name]()
        else:
            log.info("skipping %s: %s", name, reason)
            done[name] = reason
    write_json(results.analysis_dir / "index.json", {n: "done" if isinstance(v, dict) else v for n, v in done.items()})
    return done
