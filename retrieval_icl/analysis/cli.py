"""`ricl analyze ...` and `ricl report`: analyses of a saved results directory, and the report gathering them.

One subcommand per analysis in the registry, made by `add_command` from its name, description and options; `all`
takes every option. The analyses are imported when a command runs, so `ricl --help` stays fast.
"""

from __future__ import annotations

from inspect import Parameter, Signature
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import typer

from ..cli_errors import friendly_errors
from ..results_dir import ANALYSIS
from .registry import ANALYSES, OPTION_NAMES, Analysis, Options, names

if TYPE_CHECKING:
    from ..results_dir import Results

analyze_app = typer.Typer(help="Analyse a `ricl compare` results directory (no model needed); files go to "
                          "RESULTS_DIR/analysis/.", no_args_is_help=True)

RESULTS = typer.Argument(..., help="A results directory written by `ricl compare`.")
RUNS = typer.Option(None, "--run", help="Only this run (repeatable; attention, reconstruct, kernel and surrogate); "
                    "default: the runs of the first label format and pool.")
FRACTION = typer.Option(0.7, "--selection-fraction", min=0.0, max=1.0,
                        help="Share of the queries used to choose the best head; the rest are held out (paper: 0.7).")
SELECTION_N = typer.Option(None, "--selection-n", min=1, help="Number of selection queries (overrides the fraction).")
SEED = typer.Option(0, "--seed", help="Seed of the selection split and bootstrap.")
BANDWIDTH = typer.Option(0.1, "--bandwidth", min=0.0, help="Bandwidth h of the encoder kernel exp((cos - 1) / h); "
                         "0 = nearest neighbour.")
BINS = typer.Option(5, "--bins", min=2, help="Quantile bins of similarity for random selections.")
REFERENCE = typer.Option(None, "--reference", help="The run the frontier tests every run against; default: the run "
                         "labelled knn-k8, else a knn run with k = 8.")
N_SPLITS = typer.Option(20, "--n-splits", min=1, help="Seeded selection/held-out splits the Table 2 controls "
                        "average over.")
N_NULL = typer.Option(200, "--n-null", min=0, help="Label permutations of the null for the best head.")
# Each registry Options field: its type and its typer option (real types: typer reads them from the signature).
OPTIONS = {"runs": (Optional[list[str]], RUNS), "bandwidth": (float, BANDWIDTH),
           "selection_fraction": (float, FRACTION), "selection_n": (Optional[int], SELECTION_N), "seed": (int, SEED),
           "bins": (int, BINS),
           "reference": (Optional[str], REFERENCE), "n_splits": (int, N_SPLITS), "n_null": (int, N_NULL)}


def _load(results_dir: Path) -> Results:
    """The results directory, loaded and checked."""
    from ..results_dir import load_results

    return load_results(results_dir)


def with_options(command: Callable[..., None], takes: Sequence[str]) -> Callable[..., None]:
    """`command(results_dir, **options)` given the signature typer reads: RESULTS, then the options `takes` names."""
    params = [Parameter("results_dir", Parameter.POSITIONAL_OR_KEYWORD, default=RESULTS, annotation=Path)]
    params += [Parameter(t, Parameter.KEYWORD_ONLY, default=OPTIONS[t][1], annotation=OPTIONS[t][0]) for t in takes]
    command.__signature__ = Signature(params, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return command


def add_command(analysis: Analysis) -> None:
    """`ricl analyze <command>`: run the analysis alone, print its summary lines and the file written."""

    def command(results_dir: Path, **options: Any) -> None:
        results = _load(results_dir)
        found = analysis.run(results, Options(**options))
        for line in analysis.summary(found):
            typer.echo(line)
        typer.echo(f"{analysis.name}: {results.analysis_dir / (analysis.name + '.json')}")

    command.__name__ = command.__qualname__ = analysis.name
    analyze_app.command(analysis.command, help=analysis.description)(
        friendly_errors(with_options(command, analysis.takes)))


for _analysis in ANALYSES:
    add_command(_analysis)


def analyze_all(results_dir: Path, **options: Any) -> None:
    """Every analysis the records allow (the others are listed as skipped, with the reason)."""
    from . import run_analyses

    results = _load(results_dir)
    done = run_analyses(results, Options(**options))
    for name, value in done.items():
        typer.echo(f"{name}: " + ("done" if isinstance(value, dict) else f"skipped ({value})"))
    typer.echo(f"files in {results.analysis_dir}")


analyze_app.command("all")(friendly_errors(with_options(analyze_all, OPTION_NAMES)))


@friendly_errors
def report(results_dirs: list[Path] = typer.Argument(..., help="A results directory of `ricl compare` or its archive; "
                                                    "several make one cross-run Table 2 (models and tasks side by "
                                                    "side) in --out; an archive root of studies, its findings."),
           html: bool = typer.Option(True, "--html/--no-html", help="Also write "
           "report.html (self-contained, figures embedded)."),
           analyze: bool = typer.Option(True, "--analyze/--no-analyze", help="Run `analyze all` first when "
                                        "RESULTS_DIR/analysis holds no saved analysis."),
           out: Optional[Path] = typer.Option(None, "--out", help="Folder of the cross-run table (several "
                                              "directories); default results/cross_run."),
           bandwidth: float = BANDWIDTH, selection_fraction: float = FRACTION, selection_n: Optional[int] = SELECTION_N,
           seed: int = SEED, n_splits: int = N_SPLITS, n_null: int = N_NULL) -> None:
    """Write RESULTS_DIR/report.md (and .html): setup, accuracy, and every saved analysis with figures and tables.
    With several directories: OUT/table2.md and table2.csv, Table 2 across models and tasks with the paper's rows.
    With an archive root of studies (benchmarks/results): its findings.md, every study's verdicts."""
    from . import run_all, write_report
    from .findings import STUDY_JSON, write_findings

    if len(results_dirs) == 1 and any(results_dirs[0].glob(f"*/{STUDY_JSON}")):  # an archive root of studies
        for path in write_findings(results_dirs[0]):
            typer.echo(f"wrote {path}")
        return
    if len(results_dirs) > 1:
        from .crossrun import write_cross_run_report

        for path in write_cross_run_report(results_dirs, out or Path("results/cross_run"), bandwidth,
                                           selection_fraction, selection_n, seed, n_splits, n_null):
            typer.echo(f"wrote {path}")
        return
    results_dir = results_dirs[0]
    folder = results_dir / ANALYSIS
    if analyze and not any((folder / f"{n}.json").exists() for n in names()):
        run_all(_load(results_dir), bandwidth=bandwidth, selection_fraction=selection_fraction,
                selection_n=selection_n, seed=seed, n_splits=n_splits, n_null=n_null)
    for path in write_report(results_dir, html=html):
        typer.echo(f"wrote {path}")
