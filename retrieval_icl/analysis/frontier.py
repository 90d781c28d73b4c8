"""The accuracy / prompt-length frontier: what each run's accuracy costs in prompt tokens, against a reference run.

Every run in the results (any selector, k, label format, pool) is one point: accuracy with its 95% bootstrap CI
against mean prompt tokens. Each run is compared with one reference run (default: the selector labelled `knn-k8`,
else a `knn` run with k = 8) on the queries both ran, paired by query id: the accuracy difference (run - reference)
with a paired bootstrap 95% CI, and paired t tests on the per-query differences at the margin declared in the
experiment's config (`margin`, default 0.03): non-inferiority (H0: diff <= -margin) and TOST equivalence
(H0: |diff| >= margin). A test that finds no difference is no evidence of equality; these tests are. Holm's correction
runs across the non-reference runs, separately for each test; a run is `non_inferior` / `equivalent` when its
adjusted p-value is below 0.05. `resolvable_margin` (t_{0.95, n-1} * se) is the smallest margin a run with that
spread of differences and no true difference would clear: the margin the study's n can resolve.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import RiclError
from ..record import RunRecord
from ..results_dir import Results, write_csv
from ..stats import DEFAULT_MARGIN, holm, non_inferiority, paired_bootstrap_ci, resolvable_margin, tost
from .distribution import paired
from .guarantee import NOTE as GUARANTEE_NOTE
from .guarantee import guarantee_cells, guarantee_rows
from .report import Section, new_figure, save_analysis, save_figure
from .votes import most_common, rate

ALPHA = 0.05
DEFAULT_REFERENCE = "knn-k8"  # the selector label looked for first; then selector "knn" with k = 8


def default_reference(results: Results) -> str | None:
    """The first run (main runs first) whose selector label is knn-k8, else one labelled knn with k = 8, else None."""
    by_run = results.runs()
    order = list(dict.fromkeys([*results.main_runs(), *by_run]))
    for wanted in (lambda r: r.selector == DEFAULT_REFERENCE, lambda r: r.selector == "knn" and r.k == 8):
        found = [run for run in order if wanted(by_run[run][0])]
        if found:
            return found[0]
    return None


def choose_reference(results: Results, reference: str | None) -> str | None:
    """The named run, checked, or the default one (None when there is none)."""
    if reference is None:
        return default_reference(results)
    known = list(results.runs())
    if reference not in known:
        raise RiclError(f"unknown reference run {reference!r}; known runs: {', '.join(known)}")
    return reference


def demos_used(record: RunRecord) -> int:
    """Demonstrations that made it into the prompt (n_demos_used; else the ids recorded)."""
    used = record.n_demos_used
    return len(record.demo_ids) if used is None else int(used)


def family(selector: str) -> str:
    """The selector label without its k suffix: 'knn-k8' -> 'knn'."""
    return re.split(r"-k\d", selector, maxsplit=1)[0]


def run_row(run: str, records: Sequence[RunRecord], seed: int) -> dict:
    """Accuracy with CI, prompt tokens and demonstrations of one run."""
    tokens = np.array([r.prompt_tokens for r in records], dtype=np.float64)
    acc = rate(np.array([r.correct for r in records]), seed)
    selector = str(most_common(r.selector for r in records))
    return {"run": run, "selector": selector, "family": family(selector), "k": most_common(r.k for r in records),
            "n": len(records), "accuracy": acc["value"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"],
            "mean_tokens": float(tokens.mean()), "median_tokens": float(np.median(tokens)),
            "mean_demos": float(np.mean([demos_used(r) for r in records]))}


def declared_margin(results: Results) -> tuple[float, bool]:
    """The equivalence margin saved in the results' config, and whether it was there (older results: the default)."""
    margin = results.config.get("margin")
    if margin is None:
        return DEFAULT_MARGIN, False
    if not isinstance(margin, (int, float)) or not 0 < margin < 1:
        raise RiclError(f"margin in {results.directory / 'config.yaml'} must be a number in (0, 1), got {margin!r}")
    return float(margin), True


def versus(row: dict, records: Sequence[RunRecord], ref_row: dict, ref_records: Sequence[RunRecord], margin: float,
           seed: int) -> dict:
    """A run against the reference on the queries both ran (by query id): the difference with its paired bootstrap
    CI, the unadjusted non-inferiority and TOST p-values at `margin`, and the margin the queries can resolve."""
    x, y = paired(records, ref_records)
    d = x.astype(np.float64) - y  # (n_paired,) per-query difference in {-1, 0, 1}
    diff = paired_bootstrap_ci(x, y, seed=seed)
    return {"n_paired": int(x.size), "run_only_correct": int((x & ~y).sum()),
            "reference_only_correct": int((~x & y).sum()), "accuracy_diff": diff["value"],
            "diff_ci_low": diff["ci_low"], "diff_ci_high": diff["ci_high"],
            "token_ratio": row["mean_tokens"] / ref_row["mean_tokens"], "ni_p": non_inferiority(d, margin),
            "tost_p": tost(d, margin), "resolvable_margin": resolvable_margin(d)}


def decide(rows: list[dict]) -> None:
    """Holm-adjust the tested rows' NI and TOST p-values (one family each) and decide at ALPHA; in place."""
    tested = [r for r in rows if "ni_p" in r]  # every run but the reference
    for test, decision in (("ni_p", "non_inferior"), ("tost_p", "equivalent")):
        for r, adjusted in zip(tested, holm([r[test] for r in tested])):
            r[f"{test}_holm"] = adjusted
            r[decision] = bool(adjusted < ALPHA)  # NaN (n < 2) decides nothing: False


def frontier_rows(results: Results, reference: str | None, margin: float = DEFAULT_MARGIN,
                  seed: int = 0) -> list[dict]:
    """One row per run (file order); with a reference, each other run's paired tests against it, Holm-adjusted."""
    by_run = results.runs()
    rows = {run: run_row(run, recs, seed) for run, recs in by_run.items()}
    for run, row in rows.items():
        row["reference"] = run == reference
        if reference is not None and run != reference:
            row.update(versus(row, by_run[run], rows[reference], by_run[reference], margin, seed))
    decide(list(rows.values()))
    return list(rows.values())


TEST_COLUMNS = ("run / reference only right", "diff (95% CI)", "token ratio", "NI p (Holm)", "TOST p (Holm)",
                "resolvable margin", "non-inferior", "equivalent")


def comparison_cells(r: dict) -> dict:
    """A tested run's comparison with the reference as report cells; None (a dash) throughout for the reference."""
    if "ni_p" not in r:
        return dict.fromkeys(TEST_COLUMNS)
    cells = (f"{r['run_only_correct']} / {r['reference_only_correct']}",
             f"{r['accuracy_diff']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]",
             f"{r['token_ratio']:.2f}", f"{r['ni_p_holm']:.3g}", f"{r['tost_p_holm']:.3g}",
             f"{r['resolvable_margin']:.3f}", "yes" if r["non_inferior"] else "no", "yes" if r["equivalent"] else "no")
    return dict(zip(TEST_COLUMNS, cells))


def report_rows(rows: list[dict]) -> list[dict]:
    """The rows as the report shows them: accuracy and the difference with their CIs in one cell each, tokens to
    one decimal, Holm-adjusted p-values and the decisions."""
    tested = any("ni_p" in r for r in rows)
    shown = []
    for r in rows:
        row = {"run": r["run"] + (" (reference)" if r["reference"] else ""), "k": r["k"], "n": r["n"],
               "accuracy (95% CI)": f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
               "mean tokens": f"{r['mean_tokens']:.1f}", "median tokens": f"{r['median_tokens']:.1f}",
               "mean demos": f"{r['mean_demos']:.2f}"}
        shown.append(row | comparison_cells(r) if tested else row)
    return shown


def resolution_note(rows: list[dict], margin: float) -> str:
    """The margins the study's n can resolve (smallest and largest resolvable_margin), against the declared one."""
    tested = [r for r in rows if np.isfinite(r.get("resolvable_margin", np.nan))]
    if not tested:
        return "Too few paired queries (under 2 per run) to resolve any margin."
    low, high = (min(tested, key=lambda r: r["resolvable_margin"]), max(tested, key=lambda r: r["resolvable_margin"]))
    ns = sorted({r["n_paired"] for r in tested})
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]} to {ns[-1]}"
    within = sum(r["resolvable_margin"] < margin for r in tested)
    if within == len(tested):
        verdict = "above every run's resolvable margin"
    elif within == 0:
        verdict = ("below every run's: a run with no true difference could not be shown non-inferior or equivalent "
                   "at it; resolving it takes more queries")
    else:
        verdict = (f"above the resolvable margin of {within} of {len(tested)} runs; the others could not be shown "
                   "equivalent at it, nor non-inferior unless truly better")
    return (f"With n = {n} paired queries the study can resolve margins of {low['resolvable_margin']:.3f} "
            f"({low['run']}) to {high['resolvable_margin']:.3f} ({high['run']}) (resolvable_margin: t_0.95,n-1 x se "
            "of the per-query differences, the margin a run with that spread and no true difference would just "
            f"clear); the declared margin, {margin:g}, is {verdict}.")


def frontier_note(rows: list[dict], ref: str | None, margin: float, declared: bool) -> str:
    """What the report's table holds: the reference, the tests, the margin and where it came from."""
    if ref is None:
        return (f"No reference run: none has selector label {DEFAULT_REFERENCE!r}, nor 'knn' with k = 8; name one "
                "with --reference to test the runs against it.")
    source = ("declared in config.yaml" if declared else
              "the default: this config.yaml declares no margin, as results from before the field do not")
    n_tested = sum("ni_p" in r for r in rows)
    return (f"Reference: {ref}. Each other run against it on the queries both ran, paired by query id: accuracy_diff "
            "(run - reference) with a paired bootstrap 95% CI; paired t tests on the per-query differences at the "
            f"margin {margin:g} ({source}): non-inferiority (H0: diff <= -{margin:g}) and TOST equivalence "
            f"(H0: |diff| >= {margin:g}), each Holm-adjusted across the {n_tested} runs tested; non-inferior / "
            f"equivalent: adjusted p < {ALPHA}. Not shown non-inferior is not shown inferior: the queries may lack "
            "the evidence. run_only_correct / reference_only_correct: queries only one of them got right; "
            "token_ratio: mean prompt tokens, run / reference. " + resolution_note(rows, margin))


def plot_frontier(rows: list[dict], title: str):
    """Accuracy (95% CI) against mean prompt tokens; a line per selector family, sorted by tokens; reference starred."""
    fig = new_figure(9, 5)
    ax = fig.subplots()
    for name in dict.fromkeys(r["family"] for r in rows):
        group = sorted((r for r in rows if r["family"] == name), key=lambda r: r["mean_tokens"])
        y = np.array([r["accuracy"] for r in group])
        err = np.abs(np.array([[r["ci_low"], r["ci_high"]] for r in group]).T - y)
        ax.errorbar([r["mean_tokens"] for r in group], y, yerr=err, marker="o", capsize=3, label=name)
    for r in rows:
        ax.annotate(r["run"], (r["mean_tokens"], r["accuracy"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
        if r["reference"]:
            ax.plot(r["mean_tokens"], r["accuracy"], marker="*", markersize=16, color="black", linestyle="none",
                    label=f"reference: {r['run']}", zorder=5)
    ax.set(xlabel="mean prompt tokens", ylabel="accuracy (95% CI)", title=title)
    ax.legend(fontsize=7)
    return fig


def analyze_frontier(results: Results, reference: str | None = None, seed: int = 0) -> dict:
    """Accuracy against prompt tokens for every run, each tested against a reference run at the config's margin;
    files in analysis/."""
    out = results.analysis_dir
    ref = choose_reference(results, reference)
    margin, declared = declared_margin(results)
    rows = frontier_rows(results, ref, margin, seed)
    write_csv(out / "frontier.csv", rows)
    figure = save_figure(plot_frontier(rows, f"{results.task}: accuracy against prompt length"), out / "frontier.png")
    note = frontier_note(rows, ref, margin, declared)
    promised = guarantee_rows(rows, results.selector_fits())
    if promised:
        write_csv(out / "guarantee.csv", promised)
    intro = ("Longer prompts (more or longer demonstrations) cost tokens; this frontier shows what each run's "
             "accuracy costs. One point per run, every selector, k, label format and pool: accuracy with its 95% "
             "bootstrap CI against the mean prompt length in tokens (mean_demos: demonstrations that fit the "
             "context). Runs of one selector family (label before '-k') are joined in order of tokens.")
    save_analysis(out, "frontier", "Accuracy against prompt tokens", intro,
                  [Section("Accuracy / prompt-token frontier", note + " All columns in frontier.csv.",
                           table=report_rows(rows), figure=figure)]
                  + ([Section("Adaptive's tolerance against the realised drop", GUARANTEE_NOTE,
                              table=guarantee_cells(promised))] if promised else []))
    return {"primary_metric": "accuracy", "reference": ref, "margin": margin, "margin_declared": declared,
            "note": note, "runs": {r["run"]: r for r in rows}, "guarantee": promised}
