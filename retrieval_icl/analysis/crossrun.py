"""Table 2 across results directories: models and tasks side by side in the paper's layout, with the paper's numbers.

Each directory is one `ricl compare` (one task, one model). For each of its main runs (selector), the best head is
chosen on a selection split and every metric is reported on the held-out queries with a 95% CI, as in kernel.py.
The Markdown keeps the paper's layout (metrics as rows, tasks as columns), one block of rows per model and selector,
and the paper's GPT-J-6B rows where the paper ran the task.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RiclError
from ..results_dir import Results, load_results, markdown_table, write_csv
from .controls import N_NULL, N_SPLITS
from .kernel import CONTROL_ROWS, EXTRA_ROWS, TABLE2_ROWS, cell, run_groups, table2_column
from .paper import PAPER_MODEL, TABLE2_METRICS, table2_reference

HEAD_ROWS = ("seeds", "best_head", "best_head_depth", "chosen_layers")


def run_columns(results: Results, bandwidth: float, selection_fraction: float, selection_n: int | None, seed: int,
                n_splits: int = N_SPLITS, n_null: int = N_NULL) -> list[dict]:
    """Per selector of one results directory (its seeds pooled): model, task, Table 2 metrics with the controls, and
    the best head over the splits."""
    model = str(results.config.get("model", "unknown model"))
    out = []
    for name, members in run_groups(results).items():
        column, controls = table2_column(results, members, bandwidth, selection_fraction, selection_n, seed, n_splits,
                                         n_null)
        first = results.runs([members[0]])[members[0]][0]
        entry = {"model": model, "task": results.task, "selector": first.selector, "run": name,
                 "metrics": column, "directory": str(results.directory),
                 "seeds": "+".join(str(results.runs([m])[m][0].seed) for m in members)}
        if controls is not None:
            layers, names = controls.shape_[0], controls.head_names()
            head, count = Counter(names).most_common(1)[0]
            entry["best_head"] = f"{head} ({count}/{len(names)} splits)"
            entry["best_head_depth"] = float(np.mean([h // controls.shape_[1] for h in controls.heads_])
                                             / max(layers - 1, 1))  # 0 = first layer, 1 = last
            entry["chosen_layers"] = " ".join(f"L{layer}:{n}" for layer, n in sorted(controls.layers_.items()))
            entry["layer_counts"] = controls.layer_counts()
            entry["verdict"] = controls.verdict()
        out.append(entry)
    return out


def collect(directories: Sequence[str | Path], bandwidth: float = 0.1, selection_fraction: float = 0.7,
            selection_n: int | None = None, seed: int = 0, n_splits: int = N_SPLITS,
            n_null: int = N_NULL) -> list[dict]:
    """run_columns of every directory; two directories with the same model, task and selector are an error."""
    entries, seen = [], {}
    for directory in directories:
        for entry in run_columns(load_results(directory), bandwidth, selection_fraction, selection_n, seed, n_splits,
                                 n_null):
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
            m = m if isinstance(m, dict) else {"value": m, "ci_low": "", "ci_high": ""}
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
            for metric in (*TABLE2_ROWS, *CONTROL_ROWS, *EXTRA_ROWS, *HEAD_ROWS, "n"):
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


def verdict_rows(entries: list[dict]) -> list[dict]:
    """Per model, task and selector: what the controls say."""
    return [{"model": e["model"], "task": e["task"], "selector": e["selector"], "seeds": e["seeds"],
             "verdict": e["verdict"]} for e in entries if "verdict" in e]


def depth_rows(entries: list[dict]) -> list[dict]:
    """Per model: splits choosing each layer, summed over its tasks and selectors (the depth histogram)."""
    rows = []
    for model in dict.fromkeys(e["model"] for e in entries):
        counts = Counter()
        for e in entries:
            if e["model"] == model and "layer_counts" in e:
                counts.update(e["layer_counts"])
        if counts:
            n_layers = max(counts) + 1
            rows.append({"model": model, "splits": sum(counts.values()),
                         **{f"L{layer}": counts.get(layer, 0) for layer in range(n_layers)}})
    return rows


def write_cross_run_report(directories: Sequence[str | Path], out: str | Path, bandwidth: float = 0.1,
                           selection_fraction: float = 0.7, selection_n: int | None = None, seed: int = 0,
                           n_splits: int = N_SPLITS, n_null: int = N_NULL) -> list[Path]:
    """OUT/table2.md (paper layout, controls, depth histograms), OUT/table2.csv (long form) over several results
    directories."""
    entries = collect(directories, bandwidth, selection_fraction, selection_n, seed, n_splits, n_null)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = f"{selection_n} queries" if selection_n else f"{selection_fraction:.0%} of the queries"
    text = ("# Table 2 across models and tasks\n\n"
            f"Each cell: the mean over {n_splits} seeded selection/held-out splits of the held-out value [95% "
            "interval of a bootstrap of the held-out queries pooled over the splits]; the best head is chosen on "
            f"{split} of each split. A selector's seeds are pooled, a query being one cluster. icl_accuracy and every "
            "agreement are with the model's raw (uncalibrated) prediction. The rows after head_kernel_accuracy are "
            "the controls: Cohen's kappa of the head against the LM [split percentiles], its margin over the best "
            "one-line baseline (paired; the best baseline chosen on each resample), the permutation null's p "
            f"({n_null} label shuffles within each prompt), each baseline's agreement and accuracy, and the "
            "span-max ablation (the largest attention over [x_i, ':', y_i] instead of the label tokens). "
            "encoder_kernel_*: kernel regression on the experiment's sentence encoder, exp((cos - 1)/h), bandwidth "
            f"h = {bandwidth} (0: nearest neighbour). "
            "best_head: the head chosen most often; best_head_depth: the mean chosen layer / (layers - 1). The "
            f"paper's rows are {PAPER_MODEL}, Table 2 (a different model and protocol details; read them as a "
            "reference, not a target).\n\nSources:\n\n" + "".join(f"- `{d}`\n" for d in directories) + "\n"
            + markdown_table(layout_rows(entries)))
    if any("verdict" in e for e in entries):
        text += "\n\n## What the controls say\n\n" + markdown_table(verdict_rows(entries))
        text += ("\n\n## Layer of the best head over the splits, per model\n\nSplits that chose each layer, "
                 "summed over the model's tasks and selectors.\n\n" + markdown_table(depth_rows(entries)))
    written = [out / "table2.md", out / "table2.csv"]
    written[0].write_text(text)
    write_csv(written[1], long_rows(entries))
    return written
