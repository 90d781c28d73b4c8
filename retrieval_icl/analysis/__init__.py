"""Analyses over saved run records (no model): attention maps, per-head reconstruction, kernel regression, the kernel
surrogate, bandwidth, label format, demonstration distribution, the accuracy / prompt-token frontier, and the report
that gathers them.

    from retrieval_icl.analysis import run_all, write_report
    from retrieval_icl.results_dir import load_results
    results = load_results("results/sst2_reconstruction")
    run_all(results)                      # every analysis the records allow, files in results/.../analysis/
    write_report(results.directory)       # report.md + report.html

The records come from results_dir.py (`load_results`: one checked RunRecord per line of records.jsonl). Modules:
registry.py (each analysis declared once: name, command, when it applies, how it runs), attention.py (Figure 2 map,
HeadReconstruction), kernel.py (KernelRegression, Table 2), controls.py (baselines, repeated splits, permutation
null), surrogate.py (KernelSurrogate against the LM; fit_surrogate), bandwidth.py, label_format.py, distribution.py,
frontier.py (accuracy against prompt tokens), votes.py (label votes, rates, tallies), report.py, cli.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..results_dir import Results
from . import report
from .registry import ANALYSES, Options, names

log = logging.getLogger(__name__)

__all__ = ["applicable", "run_all", "run_analyses", "write_report"]


def applicable(results: Results, runs: Sequence[str] | None = None) -> dict[str, str | None]:
    """Analysis name -> None if the records allow it, else the reason it is skipped."""
    return {a.name: a.applies(results, runs) for a in ANALYSES}


def run_analyses(results: Results, options: Options = Options()) -> dict[str, dict | str]:
    """Every analysis the records allow; name -> its result dict, or the reason it was skipped (also saved)."""
    done: dict[str, dict | str] = {}
    reasons = applicable(results, options.runs)
    for analysis in ANALYSES:
        reason = reasons[analysis.name]
        if reason is None:
            log.info("analysis %s", analysis.name)
            done[analysis.name] = analysis.run(results, options)
        else:
            log.info("skipping %s: %s", analysis.name, reason)
            done[analysis.name] = reason
    report.write_json(results.analysis_dir / "index.json",
                      {n: "done" if isinstance(v, dict) else v for n, v in done.items()})
    return done


def run_all(results: Results, runs: Sequence[str] | None = None, bandwidth: float = 0.1,
            selection_fraction: float = 0.7, selection_n: int | None = None, seed: int = 0, n_bins: int = 5,
            reference: str | None = None, n_splits: int = 20, n_null: int = 200) -> dict[str, dict | str]:
    """`run_analyses` with the options as keywords."""
    return run_analyses(results, Options(runs=runs, bandwidth=bandwidth, selection_fraction=selection_fraction,
                                         selection_n=selection_n, seed=seed, bins=n_bins, reference=reference,
                                         n_splits=n_splits, n_null=n_null))


def write_report(directory: str | Path, html: bool = True) -> list[Path]:
    """Write RESULTS_DIR/report.md (and report.html) from the saved analyses, in registry order; returns the paths."""
    return report.write_report(directory, names(), html)
