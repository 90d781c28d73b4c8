"""In-distribution demonstrations: the task's own pool against shifted pools (perturbed copies, another corpus), and
representative selections (k-means medoids, vote-k) against random ones, paired by query with exact McNemar tests.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import RiclError
from ..record import RunRecord
from ..results_dir import Results, write_csv
from ..stats import mcnemar
from .bandwidth import mean_similarity
from .report import Section, new_figure, save_analysis, save_figure
from .votes import group_by, rate

REPRESENTATIVE = ("kmeans", "votek")


def paired(a: Sequence[RunRecord], b: Sequence[RunRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of two runs on the queries they share, paired by query id: two (shared,) bool arrays."""
    by_id = {r.query_id: r.correct for r in b}
    shared = [r for r in a if r.query_id in by_id]
    return np.array([r.correct for r in shared], bool), np.array([by_id[r.query_id] for r in shared], bool)


def versus(a: Sequence[RunRecord], b: Sequence[RunRecord]) -> dict:
    """Accuracy difference a - b on the queries both ran and the exact McNemar p-value."""
    x, y = paired(a, b)
    if not x.size:
        return {"diff": float("nan"), "p": float("nan")}
    return {"diff": float(x.mean() - y.mean()), "p": mcnemar(x, y)["p_value"]}


def pool_description(results: Results, pool: str) -> str:
    """How a pool was made, from config.yaml: the task's own pool, a perturbation at a rate, or another corpus."""
    for p in results.config.get("pools") or []:
        if p.get("name") == pool:
            if p.get("perturb") == "shuffle":  # the rate does not apply: every text is shuffled whole
                return "shuffle (every text's words)"
            if p.get("perturb"):
                return f"{p['perturb']} (rate {p.get('rate', 0.3)})"
            if p.get("task"):
                return f"corpus {p['task']}" + (f" {p['split']}" if p.get("split") else "")
            return "the task's pool"
    return pool


def run_row(results: Results, records: list[RunRecord]) -> dict:
    """Accuracy (CI) and mean similarity of one run."""
    r0, acc = records[0], rate(np.array([r.correct for r in records]))
    return {"run": r0.run, "selector": r0.selector, "pool": r0.pool,
            "pool_made_from": pool_description(results, r0.pool), "k": r0.k, "label_format": r0.label_format,
            "seed": r0.seed, "n": len(records), "accuracy": acc["value"], "ci_low": acc["ci_low"],
            "ci_high": acc["ci_high"], "mean_similarity": float(np.nanmean([mean_similarity(r) for r in records]))}


def pool_rows(results: Results) -> list[dict]:
    """Every run, with its accuracy difference and McNemar p against the same selector on the reference pool."""
    reference = results.pool_order()[0]
    by_run = results.runs()
    same = group_by(by_run.values(), lambda recs: (recs[0].selector, recs[0].seed, recs[0].k, recs[0].label_format))
    rows = []
    for runs in same.values():
        ref = next((recs for recs in runs if recs[0].pool == reference), None)
        for recs in runs:
            vs = versus(recs, ref) if ref is not None and recs is not ref else {}
            rows.append(run_row(results, recs) | {f"{k}_vs_{reference}": v for k, v in vs.items()})
    return rows


def representative_rows(results: Results) -> list[dict]:
    """Each representative-selector run against the random run of its pool, k, format (its own seed if random has
    it)."""
    specs = results.selector_specs()
    runs = list(results.runs().values())
    cond = lambda recs: (recs[0].pool, recs[0].k, recs[0].label_format)  # noqa: E731
    rows = []
    for recs in (r for r in runs if specs[r[0].selector]["name"] in REPRESENTATIVE):
        randoms = [b for b in runs if specs[b[0].selector]["name"] == "random" and cond(b) == cond(recs)]
        base = next((b for b in randoms if b[0].seed == recs[0].seed), randoms[0] if randoms else None)
        if base is not None:
            mine, other = run_row(results, recs), run_row(results, base)
            rows.append({"run": recs[0].run, "versus": base[0].run, "pool": recs[0].pool, "k": recs[0].k,
                         **{key: mine[key] for key in ("accuracy", "ci_low", "ci_high")},
                         "random_accuracy": other["accuracy"], "random_ci_low": other["ci_low"],
                         "random_ci_high": other["ci_high"],
                         **{f"{k}_vs_random": v for k, v in versus(recs, base).items()}})
    return rows


def plot_pools(rows: list[dict], pools: list[str]):
    """Accuracy (95% CI) per pool, one bar per selector (and k / format / seed where those vary)."""
    fig = new_figure(9, 4.5)
    ax = fig.subplots()
    series = group_by(rows, lambda r: (r["selector"], r["k"], r["label_format"], r["seed"]))
    width = 0.8 / max(len(series), 1)
    varies = [len({key[i] for key in series}) > 1 for i in range(4)]
    for j, (key, srows) in enumerate(series.items()):
        x = np.array([pools.index(r["pool"]) for r in srows]) + j * width
        y = np.array([r["accuracy"] for r in srows])
        err = np.abs(np.array([[r["ci_low"], r["ci_high"]] for r in srows]).T - y)
        name = " ".join(str(v) for v, show in zip(key, [True, *varies[1:]]) if show)
        ax.bar(x, y, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(np.arange(len(pools)) + 0.4 - width / 2, pools, rotation=20)
    ax.set(ylabel="accuracy (95% CI)", ylim=(0, 1), title="Demonstrations from shifted pools")
    ax.legend(fontsize=7)
    return fig


def analyze_distribution(results: Results) -> dict:
    """Accuracy per pool (vs the reference pool) and representative vs random selections; CSV + PNG in analysis/."""
    pools = results.pool_order()
    specs = results.selector_specs()
    has_rep = any(s["name"] in REPRESENTATIVE for s in specs.values())
    if len(pools) < 2 and not has_rep:
        raise RiclError(f"nothing to compare in {results.directory}: one pool ({pools[0]}) and no representative "
                        f"selector ({', '.join(REPRESENTATIVE)}); configure several `pools` or a kmeans selector")
    out, sections = results.analysis_dir, []
    rows = pool_rows(results)
    write_csv(out / "distribution_pools.csv", rows)
    if len(pools) > 1:
        figure = save_figure(plot_pools(rows, pools), out / "distribution_pools.png")
        sections.append(Section(f"Accuracy per demonstration pool (reference: {pools[0]})",
                                "Each selector draws its demonstrations from each pool for the same queries; the "
                                "diff and p compare it with the reference pool, paired by query (exact McNemar).",
                                table=rows, figure=figure))
    rep = representative_rows(results)
    if rep:
        write_csv(out / "distribution_representative.csv", rep)
        sections.append(Section("Representative vs random demonstrations",
                                "Representative: the pool examples nearest to k-means centroids (kmeans) or chosen by "
                                "vote-k, fixed for all queries; each query takes the k of them most similar to it.",
                                table=rep))
    if len(pools) < 2:
        sections.append(Section("Accuracy per run", table=rows))
    intro = ("The paper argues the kernel view holds where the pretraining distribution covers the inputs: "
             "in-distribution, representative demonstrations should help. Shifted pools are perturbed copies of "
             "the task's pool (typos, rare-word substitution, shuffled words) or another corpus with the same labels.")
    save_analysis(out, "distribution", "In-distribution and representative demonstrations", intro, sections)
    return {"primary_metric": "accuracy", "pools": rows, "representative": rep}
