"""`ricl analyze ...` and `ricl report`: analyses of a saved results directory, and the report gathering them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_errors import friendly_errors

analyze_app = typer.Typer(help="Analyse a `ricl compare` results directory (no model needed); files go to "
                          "RESULTS_DIR/analysis/.", no_args_is_help=True)

RESULTS = typer.Argument(..., help="A results directory written by `ricl compare`.")
RUNS = typer.Option(None, "--run", help="Only this run (repeatable; attention, reconstruct and kernel); default: "
                    "the runs of the first label format and pool.")
FRACTION = typer.Option(0.7, "--selection-fraction", min=0.0, max=1.0,
                        help="Share of the queries used to choose the best head; the rest are held out (paper: 0.7).")
SELECTION_N = typer.Option(None, "--selection-n", min=1, help="Number of selection queries (overrides the fraction).")
SEED = typer.Option(0, "--seed", help="Seed of the selection split and bootstrap.")
TAU = typer.Option(0.1, "--tau", min=0.0, help="Bandwidth of the encoder kernel exp(cos/tau); 0 = nearest neighbour.")
BINS = typer.Option(5, "--bins", min=2, help="Quantile bins of similarity for random selections.")


def _load(results_dir: Path):
    from .records import load_results

    return load_results(results_dir)


def _done(results, *names: str) -> None:
    folder = results.analysis_dir
    for name in names:
        typer.echo(f"{name}: {folder / (name + '.json')}")


@analyze_app.command("attention")
@friendly_errors
def attention(results_dir: Path = RESULTS, run: Optional[list[str]] = RUNS) -> None:
    """Figure 2: attention from the prediction position over each demonstration's tokens, per layer."""
    from .attention import analyze_attention

    results = _load(results_dir)
    analyze_attention(results, run)
    _done(results, "attention")


@analyze_app.command("reconstruct")
@friendly_errors
def reconstruct(results_dir: Path = RESULTS, run: Optional[list[str]] = RUNS, selection_fraction: float = FRACTION,
                selection_n: Optional[int] = SELECTION_N, seed: int = SEED) -> None:
    """ICL prediction reconstructed from each head's attention; best head chosen on a selection split."""
    from .attention import analyze_reconstruction

    results = _load(results_dir)
    found = analyze_reconstruction(results, run, selection_fraction, selection_n, seed)
    for name, row in found["runs"].items():
        typer.echo(f"{name}: best head L{row['best_layer']}H{row['best_head']}, held-out agreement "
                   f"{row['agreement']:.3f}, accuracy {row['reconstructed_accuracy']:.3f} (n={row['n_heldout']})")
    _done(results, "reconstruction")


@analyze_app.command("kernel")
@friendly_errors
def kernel(results_dir: Path = RESULTS, run: Optional[list[str]] = RUNS, tau: float = TAU,
           selection_fraction: float = FRACTION, selection_n: Optional[int] = SELECTION_N, seed: int = SEED) -> None:
    """Table 2: ICL vs kernel regression with the encoder kernel, the head kernel and the reconstruction."""
    from .kernel import analyze_kernel

    results = _load(results_dir)
    analyze_kernel(results, run, tau, selection_fraction, selection_n, seed)
    _done(results, "kernel")


@analyze_app.command("bandwidth")
@friendly_errors
def bandwidth(results_dir: Path = RESULTS, bins: int = BINS, selection_fraction: float = FRACTION,
              selection_n: Optional[int] = SELECTION_N, seed: int = SEED) -> None:
    """Accuracy by similarity of the demonstrations (bands, k, random bins) and kernel entropy."""
    from .bandwidth import analyze_bandwidth

    results = _load(results_dir)
    analyze_bandwidth(results, bins, selection_fraction, selection_n, seed)
    _done(results, "bandwidth")


@analyze_app.command("label-format")
@friendly_errors
def label_format(results_dir: Path = RESULTS, selection_fraction: float = FRACTION,
                 selection_n: Optional[int] = SELECTION_N, seed: int = SEED) -> None:
    """The same selections under several label formats: accuracy, label attention, reconstruction."""
    from .label_format import analyze_label_format

    results = _load(results_dir)
    analyze_label_format(results, selection_fraction, selection_n, seed)
    _done(results, "label_format")


@analyze_app.command("distribution")
@friendly_errors
def distribution(results_dir: Path = RESULTS) -> None:
    """In-distribution vs shifted pools, representative vs random selections."""
    from .distribution import analyze_distribution

    results = _load(results_dir)
    analyze_distribution(results)
    _done(results, "distribution")


@analyze_app.command("all")
@friendly_errors
def analyze_all(results_dir: Path = RESULTS, run: Optional[list[str]] = RUNS, tau: float = TAU,
                selection_fraction: float = FRACTION, selection_n: Optional[int] = SELECTION_N, seed: int = SEED,
                bins: int = BINS) -> None:
    """Every analysis the records allow (the others are listed as skipped, with the reason)."""
    from . import run_all

    results = _load(results_dir)
    done = run_all(results, run, tau, selection_fraction, selection_n, seed, bins)
    for name, value in done.items():
        typer.echo(f"{name}: " + ("done" if isinstance(value, dict) else f"skipped ({value})"))
    typer.echo(f"files in {results.analysis_dir}")


@friendly_errors
def report(results_dirs: list[Path] = typer.Argument(..., help="A results directory of `ricl compare`; several make "
                                                    "one cross-run Table 2 (models and tasks side by side) in --out."),
           html: bool = typer.Option(True, "--html/--no-html", help="Also write "
           "report.html (self-contained, figures embedded)."),
           analyze: bool = typer.Option(True, "--analyze/--no-analyze", help="Run `analyze all` first when "
                                        "RESULTS_DIR/analysis holds no saved analysis."),
           out: Optional[Path] = typer.Option(None, "--out", help="Folder of the cross-run table (several "
                                              "directories); default results/cross_run."),
           tau: float = TAU, selection_fraction: float = FRACTION, selection_n: Optional[int] = SELECTION_N,
           seed: int = SEED) -> None:
    """Write RESULTS_DIR/report.md (and .html): setup, accuracy, and every saved analysis with figures and tables.
    With several directories: OUT/table2.md and table2.csv, Table 2 across models and tasks with the paper's rows."""
    from . import run_all
    from .report import ANALYSES, write_report

    if len(results_dirs) > 1:
        from .crossrun import write_cross_run_report

        for path in write_cross_run_report(results_dirs, out or Path("results/cross_run"), tau, selection_fraction,
                                           selection_n, seed):
            typer.echo(f"wrote {path}")
        return
    results_dir = results_dirs[0]
    folder = results_dir / "analysis"
    if analyze and not any((folder / f"{n}.json").exists() for n in ANALYSES):
        run_all(_load(results_dir))
    for path in write_report(results_dir, html=html):
        typer.echo(f"wrote {path}")
