"""The analyses, each declared once: its name, CLI command, description, when it applies, how it runs.

`applicable`, `run_all`, the report's order and the `ricl analyze` subcommands are all read from ANALYSES; their
order is the order they run in and appear in the report. This module imports no analysis: each is called through its
"module:function" path when it runs, because the analyses load matplotlib and scipy and `ricl --help` must stay fast.

>>> [a.command for a in ANALYSES]
['attention', 'reconstruct', 'kernel', 'surrogate', 'bandwidth', 'label-format', 'distribution', 'frontier']
>>> get("label-format").name, get("kernel").takes
('label_format', ('runs', 'bandwidth', 'selection_fraction', 'selection_n', 'seed', 'n_splits', 'n_null'))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

from ..errors import RiclError

if TYPE_CHECKING:
    from ..results_dir import Results


@dataclass(frozen=True)
class Options:
    """Every setting an analysis may take; each analysis is passed only the fields in its `takes`."""

    runs: Sequence[str] | None = None  # only these runs; None: the main runs (first label format and pool)
    bandwidth: float = 0.1  # bandwidth h of the encoder kernel exp((cos - 1) / h); 0 = nearest neighbour
    selection_fraction: float = 0.7  # share of the queries that choose the best head; the rest are held out
    selection_n: int | None = None  # number of selection queries (overrides the fraction)
    seed: int = 0  # seed of the selection split and bootstrap
    bins: int = 5  # quantile bins of similarity for random selections
    reference: str | None = None  # the run the frontier tests every run against; None: knn-k8 (or knn with k = 8)
    n_splits: int = 20  # seeded selection/held-out splits the Table 2 controls average over
    n_null: int = 200  # label permutations of the null for "the best head reads the labels"


OPTION_NAMES = tuple(f.name for f in fields(Options))
Applies = Callable[["Results", Optional[Sequence[str]]], Optional[str]]


def always(results: Results, runs: Sequence[str] | None) -> None:
    """Any records allow the analysis."""
    return None


def no_lines(found: dict) -> list[str]:
    """Nothing to print beyond the file written."""
    return []


@dataclass(frozen=True)
class Analysis:
    """One analysis: it writes analysis/<name>.json, and `ricl analyze <command>` runs it alone."""

    name: str
    command: str
    description: str  # one line: the command's help, listed by `ricl analyze --help`
    function: str  # "module:function" in this package, called as function(results, **the options it takes)
    takes: tuple[str, ...] = ()  # Options fields, in the order the CLI lists them
    applies: Applies = always  # None when the records allow it, else the reason it is skipped
    keywords: Mapping[str, str] = field(default_factory=dict)  # option -> the function's keyword, where they differ
    summary: Callable[[dict], list[str]] = no_lines  # lines `ricl analyze <command>` prints about the result

    def __post_init__(self) -> None:
        unknown = [t for t in self.takes if t not in OPTION_NAMES]
        if unknown or ":" not in self.function:
            raise ValueError(f"analysis {self.name!r}: takes must be among {OPTION_NAMES} and function a "
                             f"'module:function' path, got takes={self.takes}, function={self.function!r}.")

    def load(self) -> Callable[..., dict]:
        """The analysis function, imported now."""
        module, name = self.function.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)

    def arguments(self, options: Options) -> dict:
        """The keyword arguments of the function: the options it takes, renamed where its keywords differ."""
        return {self.keywords.get(t, t): getattr(options, t) for t in self.takes}

    def run(self, results: Results, options: Options = Options()) -> dict:
        """Run on the records with the options it takes; returns its result dict (files go to analysis/)."""
        return self.load()(results, **self.arguments(options))


def needs_attention(results: Results, runs: Sequence[str] | None) -> str | None:
    """Attention and reconstruction read the captured attention of the runs analysed."""
    names = list(runs) if runs else results.main_runs()
    if any(results.has_attention(r) for r in results.runs(names)):
        return None
    return "no attention captured (capture_attention: false)"


def needs_profiles(results: Results, runs: Sequence[str] | None) -> str | None:
    """Figure 2 reads each query's attention profile and span masses, which an archive does not keep."""
    if "profile" not in results.attention_kept:
        return "an archive keeps the label-token weights only; Figure 2 needs the results directory's attention"
    return needs_attention(results, runs)


def needs_label_formats(results: Results, runs: Sequence[str] | None) -> str | None:
    """Label format compares the same selector, seed, k and pool under several formats."""
    formats = {(r.selector, r.seed, r.k, r.pool, r.label_format) for r in results.records}
    return None if len(formats) > len({f[:4] for f in formats}) else "every run uses a single label format"


def needs_pools_or_representatives(results: Results, runs: Sequence[str] | None) -> str | None:
    """Distribution compares pools, or representative selectors with random ones."""
    from .distribution import REPRESENTATIVE

    if len(results.pool_order()) > 1 or any(s["name"] in REPRESENTATIVE for s in results.selector_specs().values()):
        return None
    return "one demonstration pool and no representative (kmeans/votek) selector"


def needs_two_queries(results: Results, runs: Sequence[str] | None) -> str | None:
    """The surrogate is fitted on some queries of a run and scored on the others."""
    by_run = results.runs(list(runs) if runs else results.main_runs())
    few = [name for name, recs in by_run.items() if len({r.query_id for r in recs}) < 2]
    return f"fewer than 2 queries in {', '.join(few)}: none to hold out" if few else None


def needs_tokens_and_runs(results: Results, runs: Sequence[str] | None) -> str | None:
    """The frontier reads every record's prompt_tokens and compares at least two runs."""
    missing = sum(r.prompt_tokens is None for r in results.records)
    if missing:
        return f"{missing} of {len(results.records)} records have no prompt_tokens"
    n_runs = len(results.runs())
    return None if n_runs >= 2 else f"only {n_runs} run; the frontier compares two or more"


def reconstruction_lines(found: dict) -> list[str]:
    """Per run: the best head and its held-out agreement and accuracy."""
    return [f"{name}: best head L{row['best_layer']}H{row['best_head']}, held-out agreement {row['agreement']:.3f}, "
            f"accuracy {row['reconstructed_accuracy']:.3f} (n={row['n_heldout']})"
            for name, row in found["runs"].items()]


def surrogate_lines(found: dict) -> list[str]:
    """Per run: held-out agreement with the LM, ECE and NLL of the uncalibrated and the calibrated surrogate, beside
    the constant reference's NLL."""
    return [f"{name}: agreement {row['uncalibrated']['agreement']['value']:.3f} uncalibrated, "
            f"{row['calibrated']['agreement']['value']:.3f} calibrated; ECE {row['uncalibrated']['ece']['value']:.3f}, "
            f"{row['calibrated']['ece']['value']:.3f}; NLL {row['uncalibrated']['nll']:.3f}, "
            f"{row['calibrated']['nll']:.3f} (constant {row['constant']['nll']:.3f}) (n={row['n_heldout']})"
            for name, row in found["runs"].items()]


def frontier_lines(found: dict) -> list[str]:
    """Per run: accuracy, mean prompt tokens and, with a reference, the difference and the Holm-adjusted tests."""
    lines = [] if found["reference"] else [found["note"]]
    for name, r in found["runs"].items():
        line = (f"{name}: accuracy {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}], "
                f"{r['mean_tokens']:.1f} tokens")
        if r["reference"]:
            line += " (reference)"
        elif found["reference"]:
            verdict = ("equivalent" if r["equivalent"] else "non-inferior" if r["non_inferior"]
                       else "not shown non-inferior")
            line += (f", vs {found['reference']}: {r['accuracy_diff']:+.3f} [{r['diff_ci_low']:+.3f}, "
                     f"{r['diff_ci_high']:+.3f}], margin {found['margin']:g}: NI p={r['ni_p_holm']:.3g}, TOST "
                     f"p={r['tost_p_holm']:.3g} (Holm), tokens x{r['token_ratio']:.2f}, {verdict}")
        lines.append(line)
    return lines


SPLIT = ("selection_fraction", "selection_n", "seed")
ANALYSES: tuple[Analysis, ...] = (
    Analysis("attention", "attention", "Figure 2: attention from the prediction position over each demonstration's "
             "tokens, per layer.", "attention:analyze_attention", ("runs",), needs_profiles),
    Analysis("reconstruction", "reconstruct", "ICL prediction reconstructed from each head's attention; best head "
             "chosen on a selection split.", "attention:analyze_reconstruction", ("runs", *SPLIT), needs_attention,
             summary=reconstruction_lines),
    Analysis("kernel", "kernel", "Table 2: ICL vs kernel regression with the encoder kernel, the head kernel and the "
             "reconstruction, against one-line baselines over repeated splits, with a permutation null.",
             "kernel:analyze_kernel", ("runs", "bandwidth", *SPLIT, "n_splits", "n_null")),
    Analysis("surrogate", "surrogate", "The kernel surrogate (uncalibrated and fitted) against the LM's predictions on "
             "held-out queries: NLL and Brier beside uniform and constant references, agreement, ECE, accuracy.",
             "surrogate:analyze_surrogate",
             ("runs", "bandwidth", *SPLIT), needs_two_queries, summary=surrogate_lines),
    Analysis("bandwidth", "bandwidth", "Accuracy by similarity of the demonstrations (bands, k, random bins) and "
             "kernel entropy.", "bandwidth:analyze_bandwidth", ("bins", *SPLIT), keywords={"bins": "n_bins"}),
    Analysis("label_format", "label-format", "The same selections under several label formats: accuracy, label "
             "attention, reconstruction.", "label_format:analyze_label_format", SPLIT, needs_label_formats),
    Analysis("distribution", "distribution", "In-distribution vs shifted pools, representative vs random selections.",
             "distribution:analyze_distribution", (), needs_pools_or_representatives),
    Analysis("frontier", "frontier", "Accuracy against prompt tokens for every run, each against a reference run: "
             "paired bootstrap CI of the difference, non-inferiority and TOST equivalence at the config's margin "
             "(paired t, Holm-adjusted).", "frontier:analyze_frontier", ("reference", "seed"), needs_tokens_and_runs,
             summary=frontier_lines),
)


def names() -> list[str]:
    """The analyses' names (their analysis/<name>.json), in report order."""
    return [a.name for a in ANALYSES]


def get(name: str) -> Analysis:
    """An analysis by name or CLI command; an unknown one lists the valid names."""
    for analysis in ANALYSES:
        if name in (analysis.name, analysis.command):
            return analysis
    raise RiclError(f"unknown analysis {name!r}; known: {', '.join(names())}")
