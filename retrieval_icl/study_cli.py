"""`ricl study` and `ricl archive`: run a study (resuming from its archives), and keep a results directory in git."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_errors import friendly_errors


@friendly_errors
def study(
    path: Path = typer.Argument(..., help="A study YAML (configs/studies/): experiments crossed with a grid."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rerun comparisons whose results directory (or "
                                   "archive) exists, and replace their archives."),
    reanalyze: bool = typer.Option(False, "--reanalyze", help="Rerun every directory's analyses, not only the "
                                   "missing ones."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="KEY=VALUE: run only the grid points whose KEY "
                                             "is VALUE (repeat it), e.g. model=smollm2-135m; a study in parts."),
) -> None:
    """Run a study's comparisons (those not yet run or archived), analyse each, and write the cross-run Table 2 or
    the claim's findings."""
    from .errors import RiclError
    from .study import run_study

    pairs = [item.split("=", 1) for item in only or []]
    if any(len(pair) != 2 for pair in pairs):
        raise RiclError(f"--only takes KEY=VALUE, got {only}")
    for written in run_study(path, overwrite=overwrite, reanalyze=reanalyze, only=dict(pairs)):
        typer.echo(f"wrote {written}")


@friendly_errors
def archive(
    results_dir: Path = typer.Argument(..., help="A results directory written by `ricl compare`."),
    out: Optional[Path] = typer.Option(None, "--out", help="The archive folder; default benchmarks/results/<the "
                                       "results directory's parent folder>/<its name>."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the archive at --out (only an archive)."),
    declared_in: Optional[list[Path]] = typer.Option(None, "--declared-in", help="A config file the run comes from "
                                                     "(repeat it): it must be committed unchanged; the commit is "
                                                     "recorded."),
) -> None:
    """Keep a results directory in git: config, run info, tables, records (gzip JSONL) and the attention the analyses
    read (8-bit); `ricl analyze` and `ricl report` read the archive as they read the directory."""
    from .archive import archive_results

    written = archive_results(results_dir, out, overwrite=overwrite, declared_in=declared_in or [])
    typer.echo(f"archived {results_dir} in {written}")
