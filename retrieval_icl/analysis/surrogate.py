"""How well the KernelSurrogate predicts the LM without running it, on queries held out from its fit.

Per run, a seeded split of the queries (the same as the head selection's) into a fit part and a held-out part. Two
surrogates over the encoder cosines of each query's demonstrations: uncalibrated (the bandwidth given, prior 1, no
label bias) and calibrated (bandwidth, prior and per-label log_bias fitted by maximum likelihood of the LM's own label
distribution on the fit part), beside two references that ignore the demonstrations: uniform, and constant (the fit
part's mean LM distribution). On the held-out part: NLL (cross-entropy) and Brier score against the LM's label
distribution, agreement of the argmax with the LM's raw prediction, expected calibration error on equal-mass bins with
a bootstrap CI, and accuracy against gold.

    from retrieval_icl.analysis.surrogate import fit_surrogate
    surrogate = fit_surrogate("results/sst2_reconstruction")   # KernelSurrogate fitted on the main runs' records
    surrogate.predict(cosines_of_the_demos, their_labels)      # the LM's label distribution, without the LM
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..record import RunRecord
from ..results_dir import Results, load_results, write_csv
from ..retrieval.kernel_surrogate import KernelSurrogate
from .attention import selection_split
from .kernel import cell
from .report import Section, new_figure, save_analysis, save_figure
from .votes import argmax_breaking_ties, rate, raw_predictions

ECE_BINS = 10
ECE_RESAMPLES = 1000
UNCALIBRATED_PRIOR = 1.0  # one pseudo-demonstration spread over the labels: no label gets probability 0
KINDS = ("uncalibrated", "calibrated")
REFERENCES = ("uniform", "constant")  # ignore the demonstrations: what the surrogate must beat


def lm_distribution(records: Sequence[RunRecord]) -> np.ndarray:
    """The LM's own label distribution per record, softmax of label_log_probs: (queries, n_labels)."""
    logits = np.array([r.label_log_probs for r in records], dtype=np.float64).reshape(len(records), -1)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def fit_records(records: Sequence[RunRecord], n_labels: int, prior: float | str = 0.0) -> KernelSurrogate:
    """KernelSurrogate.fit on records: their encoder cosines and demo labels against the LM's label distribution."""
    return KernelSurrogate.fit([r.encoder_similarities for r in records], [r.demo_labels for r in records],
                               lm_distribution(records), n_labels, prior)


def fit_surrogate(results: Results | str | Path, runs: Sequence[str] | None = None,
                  prior: float | str = 0.0) -> KernelSurrogate:
    """A KernelSurrogate fitted on every record of `runs` (default: the main runs) of a results directory;
    prior="fit" fits the prior too."""
    results = results if isinstance(results, Results) else load_results(results)
    records = [r for recs in results.runs(runs or results.main_runs()).values() for r in recs]
    return fit_records(records, results.n_labels, prior)


def equal_mass_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin per query, (queries,): sorted by confidence and cut into n_bins groups of (nearly) equal size."""
    order = np.argsort(confidence, kind="stable")
    bins = np.empty(len(confidence), dtype=np.int64)
    bins[order] = np.arange(len(confidence)) * min(n_bins, max(len(confidence), 1)) // max(len(confidence), 1)
    return bins


def reliability(confidence: Sequence[float], hits: Sequence[bool], n_bins: int = ECE_BINS) -> list[dict]:
    """Equal-mass bins of confidence: per bin its n, confidence range, mean confidence and hit rate."""
    c, h = np.asarray(confidence, dtype=np.float64), np.asarray(hits, dtype=bool)  # (queries,)
    bins = equal_mass_bins(c, n_bins)
    return [{"bin": int(b), "low": float(c[bins == b].min()), "high": float(c[bins == b].max()),
             "n": int((bins == b).sum()), "confidence": float(c[bins == b].mean()),
             "agreement": float(h[bins == b].mean())} for b in np.unique(bins)]


def expected_calibration_error(confidence: Sequence[float], hits: Sequence[bool], n_bins: int = ECE_BINS) -> float:
    """sum over equal-mass bins of n_bin / n * |hit rate - mean confidence|; NaN with no queries."""
    rows = reliability(confidence, hits, n_bins)
    n = sum(r["n"] for r in rows)
    return sum(r["n"] / n * abs(r["agreement"] - r["confidence"]) for r in rows) if n else float("nan")


def ece_interval(confidence: Sequence[float], hits: Sequence[bool], seed: int = 0,
                 n_resamples: int = ECE_RESAMPLES) -> dict[str, float]:
    """ECE with a 95% basic (reverse-percentile) bootstrap CI, resampling queries (the bins recut in each resample),
    clipped at 0. ECE is biased upwards and a resample's more so; the percentile interval inherits that shift (for a
    calibrated predictor it can exclude 0), the basic interval reflects it back."""
    c, h = np.asarray(confidence, dtype=np.float64), np.asarray(hits, dtype=bool)
    value = expected_calibration_error(c, h)
    if not c.size:
        return {"value": value, "ci_low": value, "ci_high": value}
    rng = np.random.default_rng(seed)
    draws = [expected_calibration_error(c[i], h[i]) for i in rng.integers(0, c.size, size=(n_resamples, c.size))]
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"value": value, "ci_low": max(0.0, float(2 * value - high)), "ci_high": max(0.0, float(2 * value - low))}


def nll(probs: np.ndarray, target: np.ndarray) -> float:
    """Mean over queries of the cross-entropy -sum_y target(y) log probs(y); inf where probs gives 0 to a target."""
    with np.errstate(divide="ignore"):
        return float(-(target * np.log(probs)).sum(axis=1).mean())


def brier(probs: np.ndarray, target: np.ndarray) -> float:
    """Mean over queries of sum_y (probs(y) - target(y))^2."""
    return float(((probs - target) ** 2).sum(axis=1).mean())


def score(probs: np.ndarray, records: Sequence[RunRecord], seed: int = 0) -> tuple[dict, np.ndarray]:
    """NLL and Brier against the LM's label distribution, agreement with its raw prediction, ECE and accuracy of
    probabilities (queries, n_labels) on records; and the predictions (queries,)."""
    predicted, ties = argmax_breaking_ties(probs, seed)  # a uniform estimate (no demonstrations) favours no label
    agree = predicted == raw_predictions(records)
    gold = np.array([r.gold for r in records])
    target = lm_distribution(records)
    confidence = probs.max(axis=1)
    metrics = {"nll": nll(probs, target), "brier": brier(probs, target), "agreement": rate(agree, seed),
               "ece": ece_interval(confidence, agree, seed), "accuracy": rate(predicted == gold, seed),
               "ties": int(ties.sum()), "reliability": reliability(confidence, agree)}
    return metrics, predicted


def surrogate_run(records: Sequence[RunRecord], n_labels: int, bandwidth: float, selection_fraction: float,
                  selection_n: int | None, seed: int) -> tuple[dict, list[dict]]:
    """Both surrogates and both references of one run on its held-out queries: the run's result and per-query rows."""
    fit_part = selection_split([r.query_id for r in records], selection_fraction, selection_n, seed)
    fit, held = [r for r, f in zip(records, fit_part) if f], [r for r, f in zip(records, fit_part) if not f]
    surrogates = {"uncalibrated": KernelSurrogate(n_labels, bandwidth=bandwidth, prior=UNCALIBRATED_PRIOR),
                  "calibrated": fit_records(fit, n_labels, prior="fit")}
    sims, labels = [r.encoder_similarities for r in held], [r.demo_labels for r in held]
    probs = {kind: s.predict_many(sims, labels) for kind, s in surrogates.items()}
    probs["uniform"] = np.full((len(held), n_labels), 1 / n_labels)
    probs["constant"] = np.tile(lm_distribution(fit).mean(axis=0), (len(held), 1))
    found = {"n_fit": len(fit), "n_heldout": len(held),
             "lm_accuracy": rate(raw_predictions(held) == np.array([r.gold for r in held]), seed)}
    rows = [{"query_id": r.query_id, "gold": r.gold, "lm_prediction": r.raw_prediction} for r in held]
    for kind, p in probs.items():
        found[kind], predictions = score(p, held, seed)
        if kind in surrogates:
            found[kind]["parameters"] = surrogates[kind].to_dict()
            for row, q, predicted in zip(rows, p, predictions):
                row |= {f"{kind}_prediction": int(predicted), f"{kind}_confidence": float(q.max()),
                        f"{kind}_p": [round(float(v), 6) for v in q]}
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
                    label=f"{run} (ECE {col[kind]['ece']['value']:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="surrogate confidence (max probability; equal-mass bins)",
               title=f"{kind} surrogate")
        ax.legend(fontsize=7)
    fig.axes[0].set_ylabel("agreement with the LM's prediction")
    return fig


def parameter_cells(col: dict) -> dict[str, str]:
    """Bandwidth, prior and log_bias of a surrogate; blank for a reference."""
    if "parameters" not in col:
        return {"bandwidth": "", "prior": "", "log_bias": ""}
    found = col["parameters"]
    return {"bandwidth": f"{found['bandwidth']:.4g}", "prior": f"{found['prior']:.4g}",
            "log_bias": ", ".join(f"{b:+.2f}" for b in found["log_bias"])}


def table_rows(found: dict[str, dict]) -> list[dict]:
    """One row per run and surrogate or reference: held-out NLL, Brier, agreement, ECE, accuracy, parameters."""
    return [{"run": run, "surrogate": kind, "nll": f"{col[kind]['nll']:.4f}", "brier": f"{col[kind]['brier']:.4f}",
             "agreement (95% CI)": cell(col[kind]["agreement"]) if kind != "uniform" else "",
             "ece (95% CI)": cell(col[kind]["ece"]) if kind != "uniform" else "",
             "accuracy (95% CI)": cell(col[kind]["accuracy"]) if kind != "uniform" else "",
             "lm_accuracy": col["lm_accuracy"]["value"], "n": col["n_heldout"], **parameter_cells(col[kind])}
            for run, col in found.items() for kind in (*KINDS, *REFERENCES)]


def analyze_surrogate(results: Results, runs: Sequence[str] | None = None, bandwidth: float = 0.1,
                      selection_fraction: float = 0.7, selection_n: int | None = None, seed: int = 0) -> dict:
    """The kernel surrogate, uncalibrated and fitted, against the LM on held-out queries; files in analysis/."""
    out, found, query_rows = results.analysis_dir, {}, []
    for run, records in results.runs(runs or results.main_runs()).items():
        found[run], rows = surrogate_run(records, results.n_labels, bandwidth, selection_fraction, selection_n, seed)
        query_rows += [{"run": run, **row} for row in rows]
    table = table_rows(found)
    write_csv(out / "surrogate.csv", table)
    write_csv(out / "surrogate_queries.csv", query_rows)
    figure = save_figure(plot_reliability(found), out / "surrogate.png")
    h = f"{bandwidth:g}" if bandwidth > 0 else "0 (nearest neighbour: the nearest demonstrations share a weight of 1)"
    intro = ("Can the encoder kernel stand in for the LM? The kernel surrogate predicts the LM's label distribution "
             "p(y) = (sum_i K(x, x_i)[y_i = y] + prior / n_labels) / (sum_i K(x, x_i) + prior), "
             "K = exp((cos(x, x_i) - 1)/h), from the cosines of each query's demonstrations alone. Uncalibrated: "
             f"h = {h}, prior {UNCALIBRATED_PRIOR:g}, no label bias. Calibrated: h, the prior and a per-label "
             "log-bias fitted by maximum likelihood of the LM's own label distribution (softmax of its label "
             f"log-probs) on a seeded {selection_n or f'{selection_fraction:.0%}'} of the queries. References that "
             "ignore the demonstrations: uniform, and constant (the fit part's mean LM distribution; its argmax is "
             "the LM's most frequent label). All are scored on the other queries: NLL (cross-entropy) and Brier score "
             "against the LM's label distribution (lower is better; a surrogate that does not beat constant has "
             "learnt nothing from the demonstrations), agreement of the argmax with the LM's raw prediction, expected "
             f"calibration error on {ECE_BINS} equal-mass bins of the max probability against agreement (95% CI by "
             f"{ECE_RESAMPLES} bootstrap resamples of the queries; ECE is biased upwards in small samples, so compare "
             "rows of the same n; the interval is the basic bootstrap's, which reflects that bias back), and accuracy "
             "against gold.")
    sections = [Section("Surrogate against the LM on held-out queries", "Per-query probabilities in "
                        "surrogate_queries.csv; lm_accuracy is the LM's raw accuracy on the same queries.",
                        table=table, figure=figure)]
    save_analysis(out, "surrogate", "Kernel surrogate: the LM predicted without running it", intro, sections)
    return {"primary_metric": "agreement", "runs": found}
