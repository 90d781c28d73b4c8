"""The accuracy / prompt-length frontier: what each run's accuracy costs in prompt tokens, against a reference run.

Every run in the results (any selector, k, label format, pool) is one point: accuracy with its 95% bootstrap CI
against mean prompt tokens. Each is tested against one reference run (default: the selector labelled `knn-k8`, else
a `knn` run with k = 8), paired by query id with an exact McNemar test; a run `matches` the reference when the test
finds no difference (p >= 0.05) and the two accuracy CIs overlap.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import RiclError
from ..stats import mcnemar
from .distribution import paired
from .records import Results, most_common
from .report import Section, new_figure, save_analysis, save_figure, write_csv
from .votes import rate

ALPHA = 0.05
DEFAULT_REFERENCE = "knn-k8"  # the selector label looked for first; then selector "knn" with k = 8


def default_reference(results: Results) -> str | None:
    """The first run (main runs first) whose selector label is knn-k8, else one labelled knn with k = 8, else None."""
    by_run = results.runs()
    order = list(dict.fromkeys([*results.main_runs(), *by_run]))
    for wanted in (lambda r: r["selector"] == DEFAULT_REFERENCE, lambda r: r["selector"] == "knn" and r["k"] == 8):
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


def demos_used(record: dict) -> int:
    """Demonstrations that made it into the prompt (n_demos_used; else the ids recorded)."""
    used = record.get("n_demos_used")
    return len(record["demo_ids"]) if used is None else int(used)


def family(selector: str) -> str:
    """The selector label without its k suffix: 'knn-k8' -> 'knn'."""
    return re.split(r"-k\d", selector, maxsplit=1)[0]


def run_row(run: str, records: Sequence[dict], seed: int) -> dict:
    """Accuracy with CI, prompt tokens and demonstrations of one run."""
    tokens = np.array([r["prompt_tokens"] for r in records], dtype=np.float64)
    acc = rate(np.array([r["correct"] for r in records]), seed)
    selector = str(most_common(r["selector"] for r in records))
    return {"run": run, "selector": selector, "family": family(selector), "k": most_common(r["k"] for r in records),
            "n": len(records), "accuracy": acc["value"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"],
            "mean_tokens": float(tokens.mean()), "median_tokens": float(np.median(tokens)),
            "mean_demos": float(np.mean([demos_used(r) for r in records]))}


def versus(row: dict, records: Sequence[dict], ref_row: dict, ref_records: Sequence[dict]) -> dict:
    """The paired test of a run against the reference on the queries both ran (by query id)."""
    x, y = paired(records, ref_records)
    test = mcnemar(x, y) if x.size else {"a_only": 0, "b_only": 0, "p_value": float("nan")}
    overlap = row["ci_low"] <= ref_row["ci_high"] and ref_row["ci_low"] <= row["ci_high"]
    return {"n_paired": int(x.size), "run_only_correct": test["a_only"], "reference_only_correct": test["b_only"],
            "p_value": test["p_value"], "accuracy_diff": float(x.mean() - y.mean()) if x.size else float("nan"),
            "token_ratio": row["mean_tokens"] / ref_row["mean_tokens"],
            "matches": bool(test["p_value"] >= ALPHA and overlap)}


def frontier_rows(results: Results, reference: str | None, seed: int = 0) -> list[dict]:
    """One row per run (file order); with a reference, its paired test against it."""
    by_run = results.runs()
    rows = {run: run_row(run, recs, seed) for run, recs in by_run.items()}
    for run, row in rows.items():
        row["reference"] = run == reference
        if reference is not None:
            row.update(versus(row, by_run[run], rows[reference], by_run[reference]))
    return list(rows.values())


def report_rows(rows: list[dict]) -> list[dict]:
    """The rows as the report shows them: accuracy with its CI in one cell, tokens to one decimal."""
    shown = []
    for r in rows:
        row = {"run": r["run"] + (" (reference)" if r["reference"] else ""), "k": r["k"], "n": r["n"],
               "accuracy (95% CI)": f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
               "mean tokens": f"{r['mean_tokens']:.1f}", "median tokens": f"{r['median_tokens']:.1f}",
               "mean demos": f"{r['mean_demos']:.2f}"}
        if "p_value" in r:
            row |= {"run / reference only right": f"{r['run_only_correct']} / {r['reference_only_correct']}",
                    "McNemar p": f"{r['p_value']:.3g}", "accuracy diff": f"{r['accuracy_diff']:+.3f}",
                    "token ratio": f"{r['token_ratio']:.2f}", "matches": "yes" if r["matches"] else "no"}
        shown.append(row)
    return shown


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
    """Accuracy against prompt tokens for every run, each tested against a reference run; files in analysis/."""
    out = results.analysis_dir
    ref = choose_reference(results, reference)
    rows = frontier_rows(results, ref, seed)
    write_csv(out / "frontier.csv", rows)
    figure = save_figure(plot_frontier(rows, f"{results.task}: accuracy against prompt length"), out / "frontier.png")
    if ref is None:
        note = (f"No reference run: none has selector label {DEFAULT_REFERENCE!r}, nor 'knn' with k = 8; name one with "
                "--reference to test the runs against it.")
    else:
        note = (f"Reference: {ref}. Each run against it on the queries both ran: exact McNemar test "
                "(run_only_correct / reference_only_correct: queries only one of them got right), accuracy_diff "
                "(run - reference on those queries), token_ratio (mean prompt tokens, run / reference) and matches "
                f"(p >= {ALPHA} and the 95% CIs overlap).")
    intro = ("Longer prompts (more or longer demonstrations) cost tokens; this frontier shows what each run's "
             "accuracy costs. One point per run, every selector, k, label format and pool: accuracy with its 95% "
             "bootstrap CI against the mean prompt length in tokens (mean_demos: demonstrations that fit the "
             "context). Runs of one selector family (label before '-k') are joined in order of tokens.")
    save_analysis(out, "frontier", "Accuracy against prompt tokens", intro,
                  [Section("Accuracy / prompt-token frontier", note + " All columns in frontier.csv.",
                           table=report_rows(rows), figure=figure)])
    return {"primary_metric": "accuracy", "reference": ref, "note": note, "runs": {r["run"]: r for r in rows}}
