"""Bandwidth: accuracy against how similar the demonstrations are to the query, and the kernel's effective width.

Conditions are (selector, k) under the experiment's first label format and pool, seeds pooled; a condition is
named by its selector label and described by the registered name and parameters from config.yaml (e.g. a `band`
selector at position 0.5 takes k demonstrations from the middle of the similarity ranking).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import stats as st

from ..record import RunRecord
from ..results_dir import Results, write_csv
from ..stats import bootstrap_ci
from .attention import demo_weights, reconstruct_run
from .report import Section, new_figure, save_analysis, save_figure
from .votes import group_by, normalise, rate


class BinnedAccuracy:
    """Accuracy in quantile bins of a per-query value (mean similarity to the query, kernel entropy), with CIs.

    >>> b = BinnedAccuracy(n_bins=2).fit([0.1, 0.2, 0.8, 0.9], [False, False, True, True])
    >>> b.accuracy_.tolist(), b.counts_.tolist()
    ([0.0, 1.0], [2, 2])
    """

    def __init__(self, n_bins: int = 5, seed: int = 0):
        self.n_bins, self.seed = n_bins, seed

    def fit(self, values: Sequence[float], correct: Sequence[bool]) -> "BinnedAccuracy":
        """Fitted per bin: edges_ (bins+1,), counts_, centers_, accuracy_, ci_low_, ci_high_; correlation_, p_value_."""
        v, c = np.asarray(values, dtype=np.float64), np.asarray(correct, dtype=bool)  # (queries,)
        self.edges_ = np.quantile(v, np.linspace(0, 1, self.n_bins + 1))
        bins = np.searchsorted(self.edges_[1:-1], v, side="right")  # (queries,) in 0..n_bins-1
        members = [bins == b for b in range(self.n_bins)]
        self.counts_ = np.array([m.sum() for m in members])
        self.centers_ = np.array([v[m].mean() if m.any() else np.nan for m in members])
        self.accuracy_ = np.array([c[m].mean() if m.any() else np.nan for m in members])
        cis = np.array([bootstrap_ci(c[m], seed=self.seed) for m in members])  # (bins, 2)
        self.ci_low_, self.ci_high_ = cis[:, 0], cis[:, 1]
        self.correlation_, self.p_value_ = float("nan"), float("nan")
        if v.std() > 0 and 0 < c.mean() < 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", st.NearConstantInputWarning)
                self.correlation_, self.p_value_ = (float(x) for x in st.pointbiserialr(c, v))
        return self

    def rows(self) -> list[dict]:
        """One row per non-empty bin."""
        return [{"bin": b, "low": float(self.edges_[b]), "high": float(self.edges_[b + 1]), "n": int(self.counts_[b]),
                 "mean_value": float(self.centers_[b]), "accuracy": float(self.accuracy_[b]),
                 "ci_low": float(self.ci_low_[b]), "ci_high": float(self.ci_high_[b])}
                for b in range(self.n_bins) if self.counts_[b]]


def mean_similarity(record: RunRecord) -> float:
    """The mean cosine of the record's demonstrations to its query under the experiment's sentence encoder, the same
    for every selector (NaN with no demonstrations)."""
    sims = record.encoder_similarities
    return float(np.mean(sims)) if sims else float("nan")


def describe(spec: dict) -> str:
    """'band(position=0.5)' from a selector's registered name and parameters."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(spec["params"].items()))
    return f"{spec['name']}({params})" if params else spec["name"]


def main_records(results: Results) -> list[RunRecord]:
    """Records under the experiment's first label format and first pool."""
    main = set(results.main_runs())
    return [r for r in results.records if r.run in main]


def condition_rows(results: Results) -> list[dict]:
    """Accuracy with CI and mean similarity per (selector, k), seeds pooled, ordered by k then similarity."""
    specs, rows = results.selector_specs(), []
    for (label, k), recs in group_by(main_records(results), lambda r: (r.selector, r.k)).items():
        correct = np.array([r.correct for r in recs])
        rows.append({"selector": label, "description": describe(specs[label]), "k": k,
                     "seeds": len({r.seed for r in recs}), "n": len(recs),
                     **{("accuracy" if key == "value" else key): v for key, v in rate(correct).items()},
                     "mean_similarity": float(np.nanmean([mean_similarity(r) for r in recs]))})
    return sorted(rows, key=lambda r: (r["k"], -r["mean_similarity"]))


def random_bins(results: Results, n_bins: int) -> dict[int, BinnedAccuracy]:
    """For the random selectors' records at each k: accuracy binned by the mean similarity of the drawn demos."""
    random_labels = {label for label, spec in results.selector_specs().items() if spec["name"] == "random"}
    recs = [r for r in main_records(results) if r.selector in random_labels and r.encoder_similarities]
    return {k: BinnedAccuracy(n_bins).fit([mean_similarity(r) for r in group], [r.correct for r in group])
            for k, group in sorted(group_by(recs, lambda r: r.k).items()) if len(group) >= n_bins}


def entropy(weights: np.ndarray) -> float:
    """Entropy of normalised kernel weights over the demonstrations, divided by log(n_demos): 0 = one demo,
    1 = uniform."""
    w = normalise(weights)
    if w.size < 2:
        return 0.0
    nz = w[w > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(w.size))


def entropy_rows(results: Results, selection_fraction: float, selection_n: int | None, seed: int,
                 n_bins: int = 3) -> tuple[list[dict], dict[str, BinnedAccuracy]]:
    """Per run with attention: entropy of the best head's kernel weights on held-out queries, against correctness."""
    rows, binned = [], {}
    for run in [r for r in results.main_runs() if results.has_attention(r)]:
        rec = reconstruct_run(results, run, selection_fraction, selection_n, seed)
        layer, head = rec.best_head_
        held = ~rec.selection_
        records = [r for r, h in zip(results.runs([run])[run], held) if h]
        ent = np.array([entropy(demo_weights(s)[layer, head]) for s, h in zip(results.summaries(run), held) if h])
        correct = np.array([r.raw_prediction == r.gold for r in records])  # the model the attention explains
        sims = np.array([mean_similarity(r) for r in records])
        p = st.mannwhitneyu(ent[correct], ent[~correct]).pvalue if 0 < correct.sum() < correct.size else np.nan
        rho = st.spearmanr(ent, sims).statistic if ent.std() > 0 and np.nanstd(sims) > 0 else np.nan
        rows.append({"run": run, "head": f"L{layer}H{head}", "n": int(correct.size),
                     "entropy_correct": float(ent[correct].mean()) if correct.any() else np.nan,
                     "entropy_wrong": float(ent[~correct].mean()) if (~correct).any() else np.nan,
                     "mann_whitney_p": float(p), "spearman_entropy_vs_similarity": float(rho)})
        if correct.size >= n_bins:
            binned[run] = BinnedAccuracy(n_bins).fit(ent, correct)
    return rows, binned


def plot_conditions(rows: list[dict]):
    """Accuracy against k per selector (several k), or per condition sorted by similarity (one k)."""
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    ks = sorted({r["k"] for r in rows})
    for label, group in group_by(rows, lambda r: r["selector"]).items():
        x = [r["k"] if len(ks) > 1 else r["mean_similarity"] for r in group]
        y = np.array([r["accuracy"] for r in group])
        err = np.abs(np.array([[r["ci_low"], r["ci_high"]] for r in group]).T - y)
        name = label if group[0]["description"] == label else f"{label}: {group[0]['description']}"
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    if len(ks) > 1:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log", base=2)
        ax.set(xlabel="k (demonstrations)", xticks=ks, xticklabels=[str(k) for k in ks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set(xlabel="mean cosine of the demonstrations to the query")
    ax.set(ylabel="accuracy (95% CI)", title="Accuracy by how near the demonstrations are")
    ax.legend(fontsize=7)
    return fig


def plot_bins(binned: dict, xlabel: str, title: str, label: str = "k="):
    """Accuracy per quantile bin, one line per group."""
    fig = new_figure(7, 4)
    ax = fig.subplots()
    for key, b in binned.items():
        ok = b.counts_ > 0
        y = b.accuracy_[ok]
        err = np.abs(np.stack([b.ci_low_[ok], b.ci_high_[ok]]) - y)
        ax.errorbar(b.centers_[ok], y, yerr=err, marker="o", capsize=3, label=f"{label}{key}")
    ax.set(xlabel=xlabel, ylabel="accuracy (95% CI)", title=title)
    ax.legend(fontsize=7)
    return fig


def analyze_bandwidth(results: Results, n_bins: int = 5, selection_fraction: float = 0.7,
                      selection_n: int | None = None, seed: int = 0) -> dict:
    """Accuracy by selection band and k, random selections binned by similarity, kernel entropy vs correctness."""
    out = results.analysis_dir
    rows = condition_rows(results)
    write_csv(out / "bandwidth_conditions.csv", rows)
    sections = [Section("Accuracy by selection (95% CI, seeds pooled)",
                        "Nearest k (knn, or band at position 0), a middle band, the farthest k and random "
                        "demonstrations; mean_similarity is the mean cosine of the chosen demonstrations to the "
                        "query.",
                        table=rows, figure=save_figure(plot_conditions(rows), out / "bandwidth_conditions.png"))]
    bins = random_bins(results, n_bins)
    if bins:
        bin_rows = [{"k": k, **row} for k, b in bins.items() for row in b.rows()]
        corr = "; ".join(f"k={k}: r={b.correlation_:.3f} (p={b.p_value_:.3g})" for k, b in bins.items())
        write_csv(out / "bandwidth_random_bins.csv", bin_rows)
        fig = plot_bins(bins, "mean cosine of the random demonstrations to the query",
                        "Random selections by similarity")
        sections.append(Section("Random demonstrations binned by similarity to the query",
                                "Quantile bins of the mean similarity; point-biserial correlation with correctness: "
                                f"{corr}.",
                                table=bin_rows, figure=save_figure(fig, out / "bandwidth_random_bins.png")))
    ent_rows, ent_bins = entropy_rows(results, selection_fraction, selection_n, seed)
    if ent_rows:
        write_csv(out / "bandwidth_entropy.csv", ent_rows)
        fig = plot_bins(ent_bins, "normalised entropy of the head's kernel weights", "Effective bandwidth", label="")
        sections.append(Section(
            "Effective bandwidth: entropy of the reconstructed kernel weights",
            "Per held-out query, the best head's weights over the demonstrations (its attention on each label y_i), "
            "normalised; entropy / log(k) is 0 when one demonstration takes all the weight and 1 when all share it. "
            "Mann-Whitney p compares correct and wrong queries.",
            table=ent_rows, figure=save_figure(fig, out / "bandwidth_entropy.png")))
    intro = ("Kernel regression with a narrow bandwidth averages only over the nearest demonstrations. The paper "
             "argues that retrieving demonstrations similar to the query narrows the bandwidth and helps. Here: "
             "accuracy of selections at different ranks of similarity and numbers k, random selections grouped by "
             "how similar they happened to be, and the entropy of the kernel weights the model itself puts on them.")
    save_analysis(out, "bandwidth", "Bandwidth: similarity of the demonstrations", intro, sections)
    return {"primary_metric": "accuracy", "conditions": rows, "entropy": ent_rows,
            "random_bins": {k: b.rows() for k, b in bins.items()}}
