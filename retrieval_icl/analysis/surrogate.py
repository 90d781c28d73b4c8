"""How well the KernelSurrogate predicts the LM without running it, on queries held out from its fit.

Per run, a seeded split of the queries (the same as the head selection's) into a fit part and a held-out part. Two
surrogates over the encoder cosines of each query's demonstrations: uncalibrated (bandwidth tau, no label bias) and
calibrated (bandwidth and per-label log_bias fitted by maximum likelihood of the LM's own label distribution on the
fit part). On the held-out part: agreement of the surrogate's argmax with the LM's raw prediction, expected calibration
error of the surrogate's confidence against that agreement, and the surrogate's accuracy against gold.

    from retrieval_icl.analysis.surrogate import fit_surrogate
    surrogate = fit_surrogate("results/sst2_reconstruction")   # KernelSurrogate fitted on the main runs' records
    surrogate.predict(cosines_of_the_demos, their_labels)      # the LM's label distribution, without the LM
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..surrogate import KernelSurrogate
from .attention import selection_split
from .kernel import cell
from .records import Results, load_results
from .report import Section, new_figure, save_analysis, save_figure, write_csv
from .votes import argmax_breaking_ties, rate, raw_predictions

ECE_BINS = 10
NARROW_BANDWIDTH = 1e-3  # stands for tau = 0 (nearest neighbour): the surrogate needs a bandwidth > 0
KINDS = ("uncalibrated", "calibrated")


def lm_distribution(records: Sequence[dict]) -> np.ndarray:
    """The LM's own label distribution per record, softmax of label_log_probs: (queries, n_labels)."""
    logits = np.array([r["label_log_probs"] for r in records], dtype=np.float64).reshape(len(records), -1)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def fit_records(records: Sequence[dict], n_labels: int, prior: float = 0.0) -> KernelSurrogate:
    """KernelSurrogate.fit on records: their encoder cosines and demo labels against the LM's label distribution."""
    return KernelSurrogate.fit([r["encoder_similarities"] for r in records], [r["demo_labels"] for r in records],
                               lm_distribution(records), n_labels, prior)


def fit_surrogate(results: Results | str | Path, runs: Sequence[str] | None = None,
                  prior: float = 0.0) -> KernelSurrogate:
    """A KernelSurrogate fitted on every record of `runs` (default: the main runs) of a results directory."""
    results = results if isinstance(results, Results) else load_results(results)
    records = [r for recs in results.runs(runs or results.main_runs()).values() for r in recs]
    return fit_records(records, results.n_labels, prior)


def reliability(confidence: Sequence[float], hits: Sequence[bool], n_bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of confidence in [0, 1]: per non-empty bin its n, mean confidence and hit rate."""
    c, h = np.asarray(confidence, dtype=np.float64), np.asarray(hits, dtype=bool)  # (queries,)
    bins = np.minimum((c * n_bins).astype(int), n_bins - 1)  # confidence 1 falls in the last bin
    return [{"bin": b, "low": b / n_bins, "high": (b + 1) / n_bins, "n": int((bins == b).sum()),
             "confidence": float(c[bins == b].mean()), "agreement": float(h[bins == b].mean())}
            for b in range(n_bins) if (bins == b).any()]


def expected_calibration_error(confidence: Sequence[float], hits: Sequence[bool], n_bins: int = ECE_BINS) -> float:
    """sum over bins of n_bin / n * |hit rate - mean confidence| (equal-width bins); NaN with no queries."""
    rows = reliability(confidence, hits, n_bins)
    n = sum(r["n"] for r in rows)
    return sum(r["n"] / n * abs(r["agreement"] - r["confidence"]) for r in rows) if n else float("nan")


def evaluate(surrogate: KernelSurrogate, records: Sequence[dict],
             seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Agreement with the LM's raw prediction, ECE and accuracy of one surrogate on records; and its probabilities
    (queries, n_labels) and predictions (queries,)."""
    probs = surrogate.predict_many([r["encoder_similarities"] for r in records], [r["demo_labels"] for r in records])
    predicted, ties = argmax_breaking_ties(probs, seed)  # a uniform estimate (no demonstrations) favours no label
    agree = predicted == raw_predictions(records)
    gold = np.array([r["gold"] for r in records])
    confidence = probs.max(axis=1)
    metrics = {"agreement": rate(agree, seed), "ece": expected_calibration_error(confidence, agree),
               "accuracy": rate(predicted == gold, seed), "ties": int(ties.sum()),
               "reliability": reliability(confidence, agree), "parameters": surrogate.to_dict()}
    return metrics, probs, predicted


def surrogate_run(records: Sequence[dict], n_labels: int, tau: float, selection_fraction: float,
                  selection_n: int | None, seed: int) -> tuple[dict, list[dict]]:
    """Both surrogates of one run on its held-out queries: the run's result and per-query rows."""
    fit_part = selection_split([r["query_id"] for r in records], selection_fraction, selection_n, seed)
    held = [r for r, f in zip(records, fit_part) if not f]
    surrogates = {"uncalibrated": KernelSurrogate(n_labels, bandwidth=tau if tau > 0 else NARROW_BANDWIDTH),
                  "calibrated": fit_records([r for r, f in zip(records, fit_part) if f], n_labels)}
    found = {"n_fit": int(fit_part.sum()), "n_heldout": len(held),
             "lm_accuracy": rate(raw_predictions(held) == np.array([r["gold"] for r in held]), seed)}
    rows = [{"query_id": r["query_id"], "gold": r["gold"], "lm_prediction": r["raw_prediction"]} for r in held]
    for kind, surrogate in surrogates.items():
        found[kind], probs, predictions = evaluate(surrogate, held, seed)
        for row, p, predicted in zip(rows, probs, predictions):
            row |= {f"{kind}_prediction": int(predicted), f"{kind}_confidence": float(p.max()),
                    f"{kind}_p": [round(float(v), 6) for v in p]}
    found["calibrated"]["fit_loss"] = surrogates["calibrated"].loss_
    return found, rows


def plot_reliability(found: dict[str, dict]):
    """Reliability diagrams: the surrogate's confidence against its agreement with the LM, one panel per kind."""
    fig = new_figure(10, 4.2)
    for ax, kind in zip(fig.subplots(1, 2, sharey=True), KINDS):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
        for run, col in found.items():
            rows = col[kind]["reliability"]
            ax.plot([r["confidence"] for r in rows], [r["agreement"] for r in rows], marker="o",
                    label=f"{run} (ECE {col[kind]['ece']:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="surrogate confidence (max probability)",
               title=f"{kind} surrogate")
        ax.legend(fontsize=7)
    fig.axes[0].set_ylabel("agreement with the LM's prediction")
    return fig


def table_rows(found: dict[str, dict]) -> list[dict]:
    """One row per run and surrogate: held-out agreement, ECE, accuracy, fitted parameters."""
    return [{"run": run, "surrogate": kind, "agreement (95% CI)": cell(col[kind]["agreement"]),
             "ece": col[kind]["ece"], "accuracy (95% CI)": cell(col[kind]["accuracy"]),
             "lm_accuracy": col["lm_accuracy"]["value"], "n": col["n_heldout"],
             "bandwidth": f"{col[kind]['parameters']['bandwidth']:.4g}",
             "log_bias": ", ".join(f"{b:+.2f}" for b in col[kind]["parameters"]["log_bias"])}
            for run, col in found.items() for kind in KINDS]


def analyze_surrogate(results: Results, runs: Sequence[str] | None = None, tau: float = 0.1,
                      selection_fraction: float = 0.7, selection_n: int | None = None, seed: int = 0) -> dict:
    """The kernel surrogate, uncalibrated and fitted, against the LM on held-out queries; files in analysis/."""
    out, found, query_rows = results.analysis_dir, {}, []
    for run, records in results.runs(runs or results.main_runs()).items():
        found[run], rows = surrogate_run(records, results.n_labels, tau, selection_fraction, selection_n, seed)
        query_rows += [{"run": run, **row} for row in rows]
    table = table_rows(found)
    write_csv(out / "surrogate.csv", table)
    write_csv(out / "surrogate_queries.csv", query_rows)
    figure = save_figure(plot_reliability(found), out / "surrogate.png")
    bandwidth = f"tau = {tau}" if tau > 0 else f"{NARROW_BANDWIDTH} (tau = 0: near nearest neighbour)"
    intro = ("Can the encoder kernel stand in for the LM? The kernel surrogate predicts the LM's label distribution "
             "p(y) = sum_i K(x, x_i)[y_i = y] / sum_i K(x, x_i), K = exp((cos(x, x_i) - 1)/h), from the cosines of "
             f"each query's demonstrations alone. Uncalibrated: h = {bandwidth}, no label bias. Calibrated: h and a "
             "per-label log-bias fitted by maximum likelihood of the LM's own label distribution (softmax of its "
             f"label log-probs) on a seeded {selection_n or f'{selection_fraction:.0%}'} of the queries. Both are "
             "scored on the other queries against the LM's raw prediction (agreement), by expected calibration error "
             f"({ECE_BINS} equal-width bins of the surrogate's max probability, against agreement) and against gold "
             "(accuracy). A query without demonstrations gets a uniform estimate (tilted by the fitted bias).")
    sections = [Section("Surrogate against the LM on held-out queries", "Per-query probabilities in "
                        "surrogate_queries.csv; lm_accuracy is the LM's raw accuracy on the same queries.",
                        table=table, figure=figure)]
    save_analysis(out, "surrogate", "Kernel surrogate: the LM predicted without running it", intro, sections)
    return {"primary_metric": "agreement", "runs": found}
