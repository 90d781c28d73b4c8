"""Kernel regression over each query's demonstrations (Table 2): sentence-encoder kernel, head kernel, attention.

y_hat(x) = argmax_c sum_i K(x, x_i) [y_i = c] / sum_i K(x, x_i), over the demonstrations that query's prompt held.
(a) encoder kernel: the KernelSurrogate's K = exp((cos(x, x_i) - 1) / h) (bandwidth h, 0 = nearest neighbour, no
    prior), cos = the record's encoder_similarities: always the experiment's
    sentence encoder (MiniLM by default), whatever kernel the selector ranked by (that one is in demo_scores);
(b) head kernel: K = the chosen head's attention from the query's prediction position to demonstration i's own
    prediction position (the "Output:" token before y_i, summary column pre_label). Under softmax attention that is
    exp(q(x) . k(x_i) / sqrt(d)) / Z, i.e. the head's query/key kernel up to a per-query constant, which the
    normalisation cancels;
(c) attention reconstruction: K = the head's attention on the label tokens y_i (the paper's protocol); the max over
    [x_i, ':', y_i] is an ablation (see attention.py).
Each is compared with the model's raw (uncalibrated) prediction: attention comes from the uncalibrated model, and
beside the one-line baselines of controls.py over repeated splits, with its permutation null.
Ties between labels (all-zero weights included) are broken uniformly at random, seeded, and counted.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

from ..lm.attention_summary import PRE_LABEL
from ..record import RunRecord
from ..results_dir import Results, write_csv
from ..retrieval.kernel_surrogate import KernelSurrogate
from .attention import MAX_PLACES, demo_weights, has_span_columns, max_places
from .controls import (
    BASELINES,
    N_NULL,
    N_SPLITS,
    ReconstructionControls,
    baseline_predictions,
    head_predictions,
    padded,
)
from .paper import PAPER_MODEL, TABLE2, table2_reference
from .report import Section, new_figure, save_analysis, save_figure
from .votes import argmax_breaking_ties, class_votes, most_common, normalise, rate, raw_predictions

TABLE2_ROWS = ("icl_accuracy", "reconstruction_agreement", "reconstructed_accuracy", "encoder_kernel_accuracy",
               "head_kernel_accuracy")
# Rows beside the paper's: the encoder kernel's agreement with the raw prediction, accuracy after calibration.
EXTRA_ROWS = ("encoder_kernel_agreement", "calibrated_icl_accuracy")
# The controls (issue 18): the best head against one-line rules, a permutation null, the span-max ablation.
CONTROL_ROWS = ("reconstruction_kappa", "margin_over_best_baseline", "best_baseline", "permutation_p",
                *(f"{b}_{m}" for b in BASELINES for m in ("agreement", "accuracy")), "span_max_agreement",
                *(f"span_max_on_{p}" for p in MAX_PLACES))
BANDWIDTHS = (0.01, 0.03, 0.1, 0.3, 1.0, 10.0)  # the sweep's bandwidths, after 0 (nearest neighbour)


class KernelRegression:
    """The KernelSurrogate's vote (no prior, no bias) over each query's own demonstrations, argmax with ties broken
    at random (seeded).

    >>> kr = KernelRegression(bandwidth=0.1).fit([[0.9, 0.2, 0.3]], [[1, 0, 0]], n_labels=2)
    >>> kr.predictions_.tolist(), round(float(kr.score([1])), 2)
    ([1], 1.0)
    """

    def __init__(self, bandwidth: float = 0.1):
        self.bandwidth = bandwidth

    def fit(self, similarities: Sequence[Sequence[float]], demo_labels: Sequence[Sequence[int]],
            n_labels: int) -> "KernelRegression":
        """Kernel-weighted label votes per query (uniform with no demonstrations); fitted: class_weights_ (queries,
        labels), summing to 1 per query, predictions_ and ties_ (queries,)."""
        self.class_weights_ = KernelSurrogate(n_labels, self.bandwidth).predict_many(similarities, demo_labels)
        self.predictions_, self.ties_ = argmax_breaking_ties(self.class_weights_)  # (Q,), (Q,)
        return self

    def score(self, gold: Sequence[int]) -> float:
        """Accuracy of predictions_ against gold."""
        return float(np.mean(self.predictions_ == np.asarray(gold)))


def head_kernel_predictions(summaries: Sequence[np.ndarray], demo_labels: Sequence[Sequence[int]], n_labels: int,
                            head: tuple[int, int]) -> np.ndarray:
    """Kernel regression with the head's query/key kernel (pre_label attention of head (layer, h)): (queries,)."""
    layer, h = head
    weights = [normalise(s[layer, h, :, PRE_LABEL]) for s in summaries]  # each (n_demos,)
    return argmax_breaking_ties(class_votes(weights, demo_labels, n_labels))[0]


def run_groups(results: Results, runs: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The runs of each selector (same k, label format and pool) under every seed, pooled as one column: name -> run
    names. A lone run keeps its name; several take the selector's and their seeds' (random-seeds0+1)."""
    groups: dict[tuple, list[str]] = {}
    for run, recs in results.runs(runs or results.main_runs()).items():
        r = recs[0]
        groups.setdefault((r.selector, r.k, r.label_format, r.pool), []).append(run)
    named = {}
    for members in groups.values():
        seeds = "+".join(str(results.runs([m])[m][0].seed) for m in members)
        named[members[0] if len(members) == 1 else f"{re.sub(r'-seed[0-9]+$', '', members[0])}-seeds{seeds}"] = members
    return named


def group_records(results: Results, runs: Sequence[str]) -> list[RunRecord]:
    """The records of several runs, run after run."""
    return [r for recs in results.runs(runs).values() for r in recs]


def encoder_hits(records: list[RunRecord], n_labels: int, bandwidth: float) -> dict[str, np.ndarray]:
    """Per record, 0/1: the encoder kernel's accuracy and agreement, and the calibrated accuracy when calibrated."""
    gold, raw = np.array([r.gold for r in records]), raw_predictions(records)
    encoder = KernelRegression(bandwidth).fit([r.encoder_similarities for r in records],
                                              [r.demo_labels for r in records], n_labels)
    hits = {"encoder_kernel_accuracy": encoder.predictions_ == gold,
            "encoder_kernel_agreement": encoder.predictions_ == raw}
    if any(r.calibrated_log_probs is not None for r in records):
        hits["calibrated_icl_accuracy"] = np.array([r.correct for r in records])
    return hits


def fit_controls(results: Results, runs: Sequence[str], bandwidth: float = 0.1, weight: str = "label",
                 n_null: int = N_NULL, **split) -> ReconstructionControls:
    """ReconstructionControls of the pooled runs from their attention (`weight` one of WEIGHT_KINDS), with the
    baselines, the encoder kernel and the head kernel (the chosen head's attention to each 'Output:' position)."""
    records, n_labels = group_records(results, runs), results.n_labels
    summaries = [s for run in runs for s in results.summaries(run)]
    labels, gold = [r.demo_labels for r in records], np.array([r.gold for r in records])
    heads = {}
    if "pre_label" in results.attention_kept:  # an archive keeps the label-token weights only
        pre_label, y, _ = padded([normalise(s[..., PRE_LABEL]) for s in summaries], labels)
        heads["head_kernel_accuracy"] = head_predictions(pre_label, y, n_labels, split.get("seed", 0)) == gold[:, None]
    return ReconstructionControls(n_null=n_null, **split).fit(
        [demo_weights(s, weight) for s in summaries], labels, raw_predictions(records), gold,
        [r.query_id for r in records], baseline_predictions(records, n_labels, split.get("seed", 0)), n_labels,
        extra_hits=encoder_hits(records, n_labels, bandwidth), extra_heads=heads)


def table2_column(results: Results, runs: Sequence[str], bandwidth: float, selection_fraction: float = 0.7,
                  selection_n: int | None = None, seed: int = 0, n_splits: int = N_SPLITS,
                  n_null: int = N_NULL) -> tuple[dict[str, dict], ReconstructionControls | None]:
    """The Table 2 metrics of one selector's runs (seeds pooled, queries as clusters) with their controls: on the
    held-out queries of n_splits seeded splits when attention was captured, else on every query."""
    records = group_records(results, runs)
    if not all(results.has_attention(r) for r in runs):
        return all_queries_column(records, results.n_labels, bandwidth, seed), None
    split = {"selection_fraction": selection_fraction, "selection_n": selection_n, "seed": seed,
             "n_splits": n_splits}
    controls = fit_controls(results, runs, bandwidth, "label", n_null, **split)
    column = dict(controls.summary_)
    column["best_baseline"] = most_common(controls.best_baselines_)
    column["permutation_p"] = bare(controls.p_value_)
    if has_span_columns(results):
        ablation = fit_controls(results, runs, bandwidth, "span_max", 0, **split)
        column["span_max_agreement"] = ablation.summary_["reconstruction_agreement"]
        summaries = [s for run in runs for s in results.summaries(run)]
        layer, head = divmod(int(most_common(ablation.heads_)), ablation.shape_[1])
        places = np.mean([max_places(s)[layer, head] for s in summaries], axis=0)  # (3,)
        column |= {f"span_max_on_{place}": bare(v) for place, v in zip(MAX_PLACES, places)}
    held = [len(np.unique(controls.clusters_[~s])) for s in controls.selection_]  # query ids, not records
    column["n"] = bare(int(round(np.mean(held))))
    return column, controls


def all_queries_column(records: list[RunRecord], n_labels: int, bandwidth: float, seed: int = 0
                       ) -> dict[str, dict]:
    """The metrics that need no attention, on every query (no head to choose): ICL, encoder kernel, baselines."""
    gold, raw = np.array([r.gold for r in records]), raw_predictions(records)
    clusters = np.array([str(r.query_id) for r in records])
    hits = {"icl_accuracy": raw == gold, **encoder_hits(records, n_labels, bandwidth)}
    for name, pred in baseline_predictions(records, n_labels, seed).items():
        hits |= {f"{name}_agreement": pred == raw, f"{name}_accuracy": pred == gold}
    return {m: rate(h, seed, clusters) for m, h in hits.items()} | {"n": bare(len(set(clusters)))}


def bare(value: float) -> dict[str, float]:
    """A number without a CI, in the metric layout."""
    return {"value": float(value), "ci_low": float("nan"), "ci_high": float("nan")}


def bandwidth_sweep(records: list[RunRecord], n_labels: int, bandwidths: Sequence[float] = BANDWIDTHS
                    ) -> list[dict]:
    """Encoder-kernel accuracy for each bandwidth, 0 (the nearest neighbour's label) first."""
    gold = np.array([r.gold for r in records])
    rows = []
    for bandwidth in (0.0, *bandwidths):
        pred = KernelRegression(bandwidth).fit([r.encoder_similarities for r in records],
                                               [r.demo_labels for r in records], n_labels).predictions_
        rows.append({"bandwidth": bandwidth, **rate(pred == gold)})
    return rows


def cell(metric: dict[str, float]) -> str:
    """'0.805 [0.760, 0.840]' for a metric with a CI; the bare value without one; text as it is."""
    if isinstance(metric, str):
        return metric
    if np.isnan(metric["ci_low"]):
        return f"{metric['value']:.0f}" if float(metric["value"]).is_integer() else f"{metric['value']:.3f}"
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


def table2_markdown_rows(columns: dict[str, dict], task: str) -> list[dict]:
    """The paper's layout: one row per metric, one column per run (and the paper's GPT-J column for its tasks)."""
    paper = table2_reference(task)
    extra = [m for m in (*CONTROL_ROWS, *EXTRA_ROWS) if any(m in col for col in columns.values())]
    rows = []
    for metric in (*TABLE2_ROWS, *extra, "n"):
        row = {"metric": metric, **{run: cell(col[metric]) if metric in col else "–" for run, col in columns.items()}}
        if paper:
            row[f"paper ({PAPER_MODEL}, {TABLE2[task].source})"] = f"{paper[metric]:.3f}" if metric in paper else "–"
        rows.append(row)
    return rows


def plot_table2(columns: dict[str, dict], sweeps: dict[str, list[dict]], title: str):
    """Bars of the Table 2 metrics per run with CIs; encoder-kernel accuracy against the bandwidth (0 = nearest
    neighbour)."""
    fig = new_figure(11, 4.5)
    ax_bars, ax_sweep = fig.subplots(1, 2, width_ratios=[2, 1])
    width = 0.8 / max(len(columns), 1)
    for j, (run, col) in enumerate(columns.items()):
        metrics = [m for m in TABLE2_ROWS if m in col]
        x = np.array([TABLE2_ROWS.index(m) for m in metrics]) + j * width
        values = np.array([col[m]["value"] for m in metrics])
        err = np.abs(np.array([[col[m]["ci_low"], col[m]["ci_high"]] for m in metrics]).T - values)
        ax_bars.bar(x, values, width, yerr=np.nan_to_num(err), label=run, capsize=2)
    ax_bars.set_xticks(np.arange(len(TABLE2_ROWS)) + 0.4 - width / 2,
                       [m.replace("_", "\n") for m in TABLE2_ROWS], fontsize=8)
    ax_bars.set(ylim=(0, 1), ylabel="rate (held-out queries)", title=title)
    ax_bars.legend(fontsize=7)
    for run, rows in sweeps.items():
        widths = [max(r["bandwidth"], BANDWIDTHS[0] / 3) for r in rows]  # 0 drawn left of the rest on a log axis
        line, = ax_sweep.plot(widths, [r["value"] for r in rows], marker="o", label=run)
        ax_sweep.fill_between(widths, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows],
                              color=line.get_color(), alpha=0.15)
    ax_sweep.set(xscale="log", xlabel="bandwidth h (leftmost: nearest neighbour)", ylabel="accuracy", ylim=(0, 1),
                 title="encoder kernel exp((cos - 1)/h)")
    return fig


def layer_rows(controls: dict[str, ReconstructionControls]) -> list[dict]:
    """Per column, how many splits chose each layer (only layers chosen somewhere), and the heads chosen."""
    layers = sorted({layer for c in controls.values() for layer, n in c.layer_counts().items() if n})
    return [{"run": name, **{f"L{layer}": c.layer_counts()[layer] for layer in layers},
             "heads chosen": ", ".join(f"{h} x{n}" for h, n in Counter(c.head_names()).most_common())}
            for name, c in controls.items()]


def verdict_rows(controls: dict[str, ReconstructionControls]) -> list[dict]:
    """Per column: what the controls say, and the null's distribution."""
    return [{"run": name, "verdict": c.verdict(), "statistic": round(c.statistic_, 4),
             "null mean": round(float(c.null_.mean()), 4) if c.null_.size else float("nan"),
             "null 95th percentile": round(float(np.quantile(c.null_, 0.95)), 4) if c.null_.size else float("nan"),
             "permutations": int(c.null_.size)} for name, c in controls.items()]


def analyze_kernel(results: Results, runs: Sequence[str] | None = None, bandwidth: float = 0.1,
                   selection_fraction: float = 0.7, selection_n: int | None = None, seed: int = 0,
                   n_splits: int = N_SPLITS, n_null: int = N_NULL) -> dict:
    """Table 2 per task with its controls: one column per selector (seeds pooled); files in analysis/."""
    out, columns, sweeps, controls = results.analysis_dir, {}, {}, {}
    for name, members in run_groups(results, runs).items():
        columns[name], fitted = table2_column(results, members, bandwidth, selection_fraction, selection_n, seed,
                                              n_splits, n_null)
        if fitted is not None:
            controls[name] = fitted
        sweeps[name] = bandwidth_sweep(group_records(results, members), results.n_labels)
    long = [{"run": run, "metric": m, **(v if isinstance(v, dict) else {"value": v})}
            for run, col in columns.items() for m, v in col.items()]
    write_csv(out / "kernel.csv", long)
    write_csv(out / "kernel_bandwidth.csv", [{"run": run, **r} for run, rows in sweeps.items() for r in rows])
    write_csv(out / "kernel_splits.csv", [{"run": name, "split_seed": seed + s, "best_head": head,
                                           "best_baseline": c.best_baselines_[s] if c.baselines_ else "",
                                           **{m: float(v[s]) for m, v in c.split_values_.items()}}
                                          for name, c in controls.items() for s, head in enumerate(c.head_names())])
    figure = save_figure(plot_table2(columns, sweeps, results.task), out / "kernel.png")
    split = f"{selection_n} queries" if selection_n else f"{selection_fraction:.0%} of the queries"
    sections = [Section(f"Table 2: {results.task}", TABLE2_TEXT.format(n_splits=n_splits, split=split,
                                                                        bandwidth=bandwidth),
                        table=table2_markdown_rows(columns, results.task), figure=figure)]
    if controls:
        sections += [Section("What the controls say", VERDICT_TEXT.format(n_null=n_null),
                             table=verdict_rows(controls)),
                     Section("Layer of the best head over the splits", "Splits (of "
                             f"{n_splits}) that chose each layer; per split in kernel_splits.csv.",
                             table=layer_rows(controls))]
    sections.append(Section("Encoder kernel accuracy against its bandwidth h",
                            "Every query. Column NN (h = 0) takes the nearest demonstration's label; CIs in "
                            "kernel_bandwidth.csv.",
                            table=[{"run": run, **{("NN" if r["bandwidth"] == 0 else f"h={r['bandwidth']:g}"):
                                                   r["value"] for r in rows}} for run, rows in sweeps.items()]))
    save_analysis(out, "kernel", "Kernel regression baselines (Table 2)", KERNEL_INTRO.format(
        bandwidth=bandwidth, source=TABLE2["sst2"].source, paper=TABLE2["sst2"].encoder_kernel_accuracy), sections)
    return {"primary_metric": "margin_over_best_baseline", "runs": columns}


KERNEL_INTRO = (
    "Table 2 of the paper, one column per selector (its seeds pooled; a query scored under several seeds is one "
    "cluster of the bootstrap). Every agreement is with the model's raw (uncalibrated) prediction, which attention "
    "explains. The reconstruction reads each demonstration's kernel weight in one head as the attention from the "
    "prediction position to its label tokens y_i (the paper's protocol); span_max_agreement is the ablation that "
    "takes the largest attention over [x_i, ':', y_i] instead (its own best head), and span_max_on_* say where that "
    "maximum falls. Kernel regression y = argmax_c sum_i K(x, x_i)[y_i = c] over the same demonstrations with (a) "
    "the experiment's sentence-encoder kernel exp((cos(x, x_i) - 1)/h), bandwidth h = {bandwidth} (0: nearest "
    "neighbour), and (b) the chosen head's "
    "query/key kernel, read as its attention to each demonstration's own 'Output:' position. Beside them, the "
    "one-line rules a head must beat: the majority of the shown labels, the last demonstration's label (next to "
    "the query), the first one's, the most similar one's (encoder), and the LM's own label prior (its prediction "
    "on the content-free prompt with the same demonstrations, when the run was calibrated). The paper ({source}) "
    "finds the MiniLM kernel near chance ({paper} on SST-2). Label ties are broken at random (seeded).")
TABLE2_TEXT = (
    "Each value is the mean over {n_splits} seeded selection/held-out splits of its held-out value (the best head "
    "chosen on {split} of each split); [95% interval] pools a bootstrap of each split's held-out queries over the "
    "splits, so it holds the query sampling and the split. reconstruction_kappa: Cohen's kappa of the head against "
    "the LM, [2.5, 97.5] percentiles over the splits. margin_over_best_baseline: the head's agreement minus the best "
    "baseline's on the same queries, paired, the best baseline chosen on each resample (which favours the "
    "baselines). icl_accuracy is the raw (uncalibrated) prediction's, which the heads are matched to; with "
    "calibrate: true, calibrated_icl_accuracy is the calibrated one's (the run's summary accuracy). n: held-out "
    "queries (a query under several seeds counts once). Runs without attention: every query, no head. Encoder "
    "kernel bandwidth h = {bandwidth}.")
VERDICT_TEXT = (
    "The head beats the baselines when the margin's interval lies above 0. The permutation null shuffles the "
    "demonstrations' labels within each prompt (attention unchanged), chooses the best head again on every split "
    "and takes its held-out agreement, averaged over the splits ({n_null} times); p = (1 + null >= real) / "
    "(1 + permutations). With knn, whose demonstrations mostly share a label, shuffling changes little: a high p "
    "there says the head adds nothing beyond the labels' counts.")
