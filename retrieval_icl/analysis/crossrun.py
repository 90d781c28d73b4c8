"""Table 2 across results directories: models and tasks side by side in the paper's layout, with the paper's numbers.

Each directory is one `ricl compare` (one task, one model). For each of its main runs (selector), the best head is
chosen on a selection split and every metric is reported on the held-out queries with a 95% CI, as in kernel.py.
The Markdown keeps the paper's layout (metrics as rows, tasks as columns), one block of rows per model and selector,
and the paper's GPT-J-6B rows where the paper ran the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import RiclError
from ..paper import PAPER_MODEL, TABLE2_METRICS, table2_reference
from .attention import reconstruct_run
from .kernel import EXTRA_ROWS, TABLE2_ROWS, cell, table2_column
from .records import Results, load_results
from .report import table_markdown, write_csv

HEAD_ROWS = ("best_head", "best_head_depth")


def run_columns(results: Results, tau: float, selection_fraction: float, selection_n: int | None,
                seed: int) -> list[dict]:
    """Per main run of one results directory: its model, task, selector, Table 2 metrics and best head."""
    model = str(results.config.get("model", "unknown model"))
    out = []
    for run in results.main_runs():
        rec = (reconstruct_run(results, run, selection_fraction, selection_n, seed)
               if results.has_attention(run) else None)
        column = table2_column(results, run, tau, rec)
        entry = {"model": model, "task": results.task, "selector": results.runs([run])[run][0]["selector"],
                 "run": run, "metrics": column, "directory": str(results.directory)}
        if rec is not None:
            layers = rec.agreement_.shape[0]
            entry["best_head"] = f"L{rec.best_head_[0]}H{rec.best_head_[1]}"
            entry["best_head_depth"] = rec.best_head_[0] / max(layers - 1, 1)  # 0 = first layer, 1 = last
        out.append(entry)
    return out


def collect(directories: Sequence[str | Path], tau: float = 0.1, selection_fraction: float = 0.7,
            selection_n: int | None = None, seed: int = 0) -> list[dict]:
    """run_columns of every directory; two directories with the same model, task and selector are an error."""
    entries, seen = [], {}
    for directory in directories:
        for entry in run_columns(load_results(directory), tau, selection_fraction, selection_n, seed):
            key = (entry["model"], entry["task"], entry["selector"])
            if key in seen:
                raise RiclError(f"{directory} and {seen[key]} both hold model {key[0]}, task {key[1]}, selector "
                                f"{key[2]}; give each combination once")
            seen[key] = directory
            entries.append(entry)
    if not entries:
        raise RiclError("no runs found in the results directories given")
    return entries


def long_rows(entries: list[dict]) -> list[dict]:
    """One CSV row per model, task, selector and metric, with its CI; the paper's values beside."""
    rows = []
    for e in entries:
        paper = table2_reference(e["task"])
        for metric, m in e["metrics"].items():
            rows.append({"model": e["model"], "task": e["task"], "selector": e["selector"], "metric": metric,
                         "value": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                         "paper_gptj": paper.get(metric, ""), "best_head": e.get("best_head", ""),
                         "best_head_depth": e.get("best_head_depth", "")})
    return rows


def layout_rows(entries: list[dict]) -> list[dict]:
    """The paper's layout: rows (model, selector, metric), one column per task; the paper's rows first."""
    tasks = list(dict.fromkeys(e["task"] for e in entries))
    rows = []
    for metric in TABLE2_METRICS:
        refs = {t: table2_reference(t).get(metric) for t in tasks}
        if any(v is not None for v in refs.values()):
            rows.append({"model": f"paper: {PAPER_MODEL}", "selector": "Table 2", "metric": metric,
                         **{t: "–" if v is None else f"{v:.3f}" for t, v in refs.items()}})
    by_key = {(e["model"], e["selector"], e["task"]): e for e in entries}
    for model in dict.fromkeys(e["model"] for e in entries):
        for selector in dict.fromkeys(e["selector"] for e in entries if e["model"] == model):
            for metric in (*TABLE2_ROWS, *EXTRA_ROWS, *HEAD_ROWS, "n"):
                cells = {t: _cell(by_key.get((model, selector, t)), metric) for t in tasks}
                if any(c != "–" for c in cells.values()):
                    rows.append({"model": model, "selector": selector, "metric": metric, **cells})
    return rows


def _cell(entry: dict | None, metric: str) -> str:
    if entry is None:
        return "–"
    if metric in HEAD_ROWS:
        value = entry.get(metric)
        return "–" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
    return cell(entry["metrics"][metric]) if metric in entry["metrics"] else "–"


def write_cross_run_report(directories: Sequence[str | Path], out: str | Path, tau: float = 0.1,
                           selection_fraction: float = 0.7, selection_n: int | None = None,
                           seed: int = 0) -> list[Path]:
    """OUT/table2.md (paper layout), OUT/table2.csv (long form) over several results directories."""
    entries = collect(directories, tau, selection_fraction, selection_n, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = f"{selection_n} queries" if selection_n else f"{selection_fraction:.0%} of the queries"
    text = ("# Table 2 across models and tasks\n\n"
            f"Each cell: value [95% bootstrap CI] on the held-out queries; the best head is chosen on {split} of each "
            "run (seeded), the rest are held out. icl_accuracy and every agreement are with the model's raw "
            "(uncalibrated) prediction. encoder_kernel_*: kernel regression on the experiment's sentence encoder, "
            f"exp(cos/tau), tau = {tau}. best_head_depth: the best head's layer / (layers - 1). The paper's rows are "
            f"{PAPER_MODEL}, Table 2 (a different model and protocol details; read them as a reference, not a "
            "target).\n\nSources:\n\n" + "".join(f"- `{d}`\n" for d in directories) + "\n"
            + table_markdown(layout_rows(entries)))
    written = [out / "table2.md", out / "table2.csv"]
    written[0].write_text(text)
    write_csv(written[1], long_rows(entries))
    return written
