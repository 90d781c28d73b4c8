"""What the studies found: each study's claim tests and figure in its archive folder, and one page across the
studies (the verdict table of the paper's three claims x model x task), all rebuilt from the archived records.

    ARCHIVE_ROOT/<study>/claims.md, claims.csv, study.json, <claim>.png   (write_study_findings, by `ricl study`)
    ARCHIVE_ROOT/findings.md, findings.csv                                (write_findings, `ricl report ROOT`)

Figures are PNGs without a software tag, so the same records give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import RiclError
from ..results_dir import Results, markdown_table, write_csv
from .bandwidth import mean_similarity
from .claims import CLAIMS, Question, claim_tests, gold_share, main_records
from .label_format import label_attention
from .report import new_figure, save_figure
from .votes import group_by, rate

STUDY_JSON = "study.json"  # in a study's archive folder: its question and archives; the findings page looks for it
CLAIMS_CSV, CLAIMS_MD, CONDITIONS_CSV = "claims.csv", "claims.md", "conditions.csv"
FINDINGS_MD, FINDINGS_CSV = "findings.md", "findings.csv"
FIGURES = {"bandwidth": "accuracy_by_similarity_rank.png", "label_format": "accuracy_by_label_format.png",
           "distribution": "accuracy_by_pool.png"}


def accuracy(records: list) -> dict:
    """Accuracy with a 95% CI, queries as clusters (a query in two draws, or under two seeds, is one)."""
    return rate(np.array([r.correct for r in records]), 0, np.array([str(r.query_id) for r in records]))


def by_model_task(results: list[Results]) -> dict[tuple, list[Results]]:
    return group_by(results, lambda r: (r.config.get("model"), r.config.get("task") or r.task))


def rank_of(results: Results, label: str) -> float | None:
    """Where a selector takes its demonstrations in the similarity ranking: knn 0, band its position; None else."""
    spec = results.selector_specs()[label]
    if spec["name"] == "knn":
        return 0.0
    return float(spec["params"].get("position", 0.0)) if spec["name"] == "band" else None


def plot_bandwidth(groups: dict[tuple, list[Results]], q: Question):
    """Accuracy (95% CI) against the similarity rank the demonstrations come from, per task; random as a band."""
    tasks = list(dict.fromkeys(task for _, task in groups))
    fig = new_figure(5.5 * len(tasks), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    colours = dict(zip(dict.fromkeys(m for m, _ in groups), ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for (model, task), group in groups.items():
        ax = axes[tasks.index(task)]
        records = [r for res in group for r in main_records(res)]
        for k, recs in sorted(group_by(records, lambda r: r.k).items()):
            style = "-" if k == max(r.k for r in records) else ":"
            points = sorted((rank_of(group[0], label), accuracy(rs)) for label, rs in
                            group_by(recs, lambda r: r.selector).items() if rank_of(group[0], label) is not None)
            x, acc = [p[0] for p in points], [p[1] for p in points]
            y = np.array([a["value"] for a in acc])
            err = np.abs(np.array([[a["ci_low"], a["ci_high"]] for a in acc]).T - y)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, ls=style, color=colours[model], label=f"{model} k={k}")
            ref = accuracy([r for r in recs if r.selector == q.reference])
            ax.axhspan(ref["ci_low"], ref["ci_high"], color=colours[model], alpha=0.08)
            ax.axhline(ref["value"], color=colours[model], ls=style, lw=0.8)
        ax.set(title=task, xlabel="similarity rank of the demonstrations (0 nearest, 1 farthest)",
               ylabel="accuracy (95% CI)", xticks=[0, 0.5, 1])
    axes[-1].legend(fontsize=7, title=f"shaded: {q.reference}", title_fontsize=7)
    return fig


def plot_conditions(groups: dict[tuple, list[Results]], axis: str, title: str):
    """Accuracy (95% CI) per label format or pool, one bar per model and selector, one panel per task."""
    tasks = list(dict.fromkeys(task for _, task in groups))
    fig = new_figure(6.5 * len(tasks), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    for task in tasks:
        ax = axes[tasks.index(task)]
        series: dict[tuple, list] = {}
        for (model, t), group in groups.items():
            for res in group if t == task else []:
                names = {label: spec["name"] for label, spec in res.selector_specs().items()}  # random's seeds pooled
                for r in res.records:
                    series.setdefault((model, names[r.selector]), []).append(r)
        names = list(dict.fromkeys(getattr(r, axis) for recs in series.values() for r in recs))
        width = 0.8 / max(len(series), 1)
        for j, ((model, selector), recs) in enumerate(series.items()):
            acc = [accuracy([r for r in recs if getattr(r, axis) == n]) for n in names]
            y = np.array([a["value"] for a in acc])
            err = np.abs(np.array([[a["ci_low"], a["ci_high"]] for a in acc]).T - y)
            ax.bar(np.arange(len(names)) + j * width, y, width, yerr=err, capsize=2, label=f"{model} {selector}")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=25, fontsize=8)
        ax.set(title=task, ylabel="accuracy (95% CI)", ylim=(0, 1))
    axes[-1].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def analysis_rows(results: Results, name: str) -> list[dict]:
    """An archive's saved analysis table (analysis/NAME.csv), its numbers as numbers; [] when not saved."""
    path = results.directory / "analysis" / name
    if not path.is_file():
        return []
    import csv

    with path.open() as f:
        return [parsed(r) for r in csv.DictReader(f)]


def condition_rows(q: Question, results: list[Results]) -> list[dict]:
    """Per model, task and condition over every draw and seed: accuracy (95% CI, queries as clusters) and what the
    claim reads beside it (similarity to the query and gold-label share; label attention and the best head's held-out
    reconstruction agreement from each archive's label_format.csv; the best head's kernel entropy on correct and wrong
    queries from bandwidth_entropy.csv)."""
    axis = {"bandwidth": lambda r: f"{r.selector} k={r.k}", "label_format": lambda r: r.label_format,
            "distribution": lambda r: f"{r.pool}, {r.selector}"}[q.claim]
    rows = []
    for (model, task), group in by_model_task(results).items():
        records = [r for res in group for r in res.records]
        saved = [row for res in group for row in analysis_rows(res, {"bandwidth": "bandwidth_entropy.csv",
                 "label_format": "label_format.csv", "distribution": "distribution_pools.csv"}[q.claim])]
        for condition, recs in group_by(records, axis).items():
            acc = accuracy(recs)
            row = {"model": model, "task": task, "condition": condition, "records": len(recs),
                   "accuracy": acc["value"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"],
                   "mean_similarity": float(np.nanmean([mean_similarity(r) for r in recs])),
                   "gold_label_share": float(np.nanmean([gold_share(r) for r in recs]))}
            if q.claim == "label_format":
                row["label_attention"] = label_attention(recs)
                mine = [s["reconstruction_agreement"] for s in saved if s["label_format"] == condition]
                row["reconstruction_agreement"] = float(np.nanmean(mine)) if mine else float("nan")
            if q.claim == "bandwidth":
                runs = {r.run for r in recs}
                mine = [s for s in saved if s["run"] in runs]
                for key in ("entropy_correct", "entropy_wrong"):
                    row[key] = float(np.nanmean([s[key] for s in mine])) if mine else float("nan")
            rows.append(row)
    return rows


def study_figure(q: Question, results: list[Results], path: Path) -> str:
    """The study's figure, saved at `path`; its file name."""
    groups = by_model_task(results)
    if q.claim == "bandwidth":
        fig = plot_bandwidth(groups, q)
    elif q.claim == "label_format":
        fig = plot_conditions(groups, "label_format", "Accuracy per label format (queries as clusters)")
    else:
        fig = plot_conditions(groups, "pool", "Accuracy per demonstration pool (queries as clusters)")
    return save_figure(fig, path)


def write_study_findings(q: Question, name: str, results: list[Results], out: Path, study_file: str) -> list[Path]:
    """claims.csv (every test), claims.md (the declared question, the verdicts, every test), the figure and
    study.json in `out`, the study's archive folder."""
    rows = claim_tests(q, results)
    write_csv(out / CLAIMS_CSV, rows)
    figure = study_figure(q, results, out / FIGURES[q.claim])
    verdicts = [verdict_row(q, r, f"{out.name}/{CLAIMS_CSV}") for r in rows if r["primary"]]
    conditions = condition_rows(q, results)
    write_csv(out / CONDITIONS_CSV, conditions)
    text = (f"# {name}: {CLAIMS[q.claim]}\n\nDeclared in `{study_file}` before it ran: {q.text} Statistic "
            f"`{q.statistic}` (claimed {q.direction}), reference `{q.reference}`"
            + (f", contrast {q.contrast}" if q.contrast else "") + f", TOST margin {q.margin:g}, alpha {q.alpha:g}; "
            f"{q.n_resamples} bootstrap resamples of queries, Holm over the study's {len(rows)} tests.\n\n"
            f"## Verdicts\n\n{markdown_table(verdicts)}\n![{name}]({figure})\n\n## Every test\n\n"
            f"{markdown_table(rows)}\n## Each condition, draws and seeds pooled ({CONDITIONS_CSV})\n\n"
            f"{markdown_table(conditions)}")
    (out / CLAIMS_MD).write_text(text)
    archives = sorted(r.directory.name for r in results)
    (out / STUDY_JSON).write_text(json.dumps({"name": name, "study_file": study_file, "question": q.model_dump(),
                                              "archives": archives, "figure": figure}, indent=1) + "\n")
    return [out / CLAIMS_MD, out / CLAIMS_CSV, out / CONDITIONS_CSV, out / figure]


def verdict_row(q: Question, row: dict, source: str) -> dict:
    """A primary test as the verdict table shows it."""
    draws = ", ".join(f"{row[k]:+.3f}" for k in sorted(row) if k.startswith("draw_"))
    adjusted = f"{row['effect']:+.3f} [{row['holm_ci_low']:+.3f}, {row['holm_ci_high']:+.3f}]"
    return {"claim": q.claim, "model": row["model"], "task": row["task"], "statistic": row["test"],
            "effect [Holm-adjusted CI]": adjusted,
            "95% CI": f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]", "p (Holm)": f"{row['p_holm']:.3g}",
            "margin": f"{q.margin:g}", "TOST p (Holm)": f"{row['tost_p_holm']:.3g}", "per draw": draws,
            "queries": int(row["n_queries"]), "verdict": row["verdict"], "source": source}


def write_findings(root: Path) -> list[Path]:
    """ROOT/findings.md and findings.csv: the verdicts of every study archived under ROOT (its folders holding
    study.json), read back from their claims.csv."""
    studies = sorted(p.parent for p in Path(root).glob(f"*/{STUDY_JSON}"))
    if not studies:
        raise RiclError(f"{root}: no study findings under it (folders with {STUDY_JSON}, written by `ricl study`)")
    rows, parts = [], []
    for folder in studies:
        info = json.loads((folder / STUDY_JSON).read_text())
        q = Question(**info["question"])
        import csv

        with (folder / CLAIMS_CSV).open() as f:
            tests = [parsed(r) for r in csv.DictReader(f)]
        rows += [verdict_row(q, r, f"{folder.name}/{CLAIMS_CSV}") for r in tests if r["primary"]]
        parts.append(f"- **{info['name']}** ({q.claim}): {q.text} Figure: [{info['figure']}]({folder.name}/"
                     f"{info['figure']}); every test: [{folder.name}/{CLAIMS_MD}]({folder.name}/{CLAIMS_MD}).")
    write_csv(Path(root) / FINDINGS_CSV, rows)
    text = ("# What the studies found\n\nThe paper's three claims (../shared/DESIGN.md), each tested by the study "
            "that declared its question, statistic, reference and margin before it ran. Supported: the Holm-adjusted "
            "CI excludes 0 in the claimed direction; contradicted: it excludes 0 the other way, or TOST at the "
            "declared margin shows no effect; else not resolved at this n.\n\n" + markdown_table(rows)
            + "\n" + "\n".join(parts) + "\n")
    (Path(root) / FINDINGS_MD).write_text(text)
    return [Path(root) / FINDINGS_MD, Path(root) / FINDINGS_CSV]


def parsed(row: dict) -> dict:
    """A claims.csv row with its numbers as numbers."""
    out = {}
    for key, value in row.items():
        if key == "primary":
            out[key] = value == "True"
            continue
        try:
            out[key] = float(value) if value else float("nan")
        except ValueError:
            out[key] = value
    return out
