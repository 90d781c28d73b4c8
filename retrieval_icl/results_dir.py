"""The results directory of `ricl compare`, owned here: its file names, its writer, and the one table writer (CSV
and Markdown) that every table of the project goes through. No torch.

    RESULTS_DIR/
      records.jsonl            one RunRecord per run and query (record.py)
      attention/RUN.safetensors  per query "<id>" (layers, heads, demos, 5), "<id>/profile", "<id>/preamble"
      config.yaml              the resolved CompareConfig, splits included
      run_info.json            versions, pools, timings; a directory holding it is one --overwrite may replace
      summary.md, summary.csv  accuracy per run with its 95% bootstrap CI
      mcnemar.csv              each selector against random, paired by query
      analysis/                what `ricl analyze` saves; report.md and report.html gather it
"""

from __future__ import annotations

import csv
import json
import math
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .atomic_dir import atomic_directory, check_replaceable
from .errors import RiclError
from .tasks import fingerprint

if TYPE_CHECKING:
    from .assemble import Run
    from .compare_config import CompareConfig, Inputs

RECORDS = "records.jsonl"
ATTENTION = "attention"
CONFIG = "config.yaml"
RUN_INFO = "run_info.json"  # every results directory has it: the mark that --overwrite may replace it
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
MCNEMAR_CSV = "mcnemar.csv"
ANALYSIS = "analysis"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def columns(rows: list[dict]) -> list[str]:
    """A table's columns: the union of the rows' keys in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r))


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV, the columns as `columns` gives them (a row lacking one leaves its cell empty); no rows
    make an empty file."""
    with path.open("w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=columns(rows))
            writer.writeheader()
            writer.writerows(rows)


def markdown_cell(value: Any, float_format: str = ".3f") -> str:
    """A Markdown table cell: floats in `float_format`, NaN and None (and a missing cell) as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


def markdown_table(rows: list[dict], float_format: str = ".3f") -> str:
    """A Markdown table of rows, the columns as `columns` gives them; "" with no rows.

    >>> print(markdown_table([{"a": 0.12345, "b": None}, {"a": 2, "c": float("nan")}]), end="")
    | a | b | c |
    |---|---|---|
    | 0.123 | – | – |
    | 2 | – | – |
    """
    if not rows:
        return ""
    names = columns(rows)
    head = "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n"
    return head + "".join("| " + " | ".join(markdown_cell(r.get(c), float_format) for c in names) + " |\n"
                          for r in rows)


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a results directory that exists when overwrite is off, and (overwrite on) one this project did not
    write."""
    if output_dir.exists() and not overwrite:
        raise RiclError(f"{output_dir} exists; pass --overwrite or choose another output_dir")
    check_replaceable(output_dir, RUN_INFO)


def package_versions() -> dict[str, str]:
    """The installed versions of the packages a result depends on, for run_info.json."""
    names = ["retrieval-icl", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu", "numpy",
             "scipy", "datasets"]  # one of the two faiss builds is installed (the cpu or gpu extra)
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_results(output_dir: Path, config: CompareConfig, inputs: Inputs, runs: list[Run], info: dict,
                  rows: list[dict], tests: list[dict]) -> None:
    """Write every file into a temporary sibling, then swap it in: a failed run leaves nothing half-written and
    the previous results whole."""
    with atomic_directory(output_dir, marker=RUN_INFO) as tmp:
        write_files(tmp, config, inputs, runs, info, rows, tests)


def write_files(tmp: Path, config: CompareConfig, inputs: Inputs, runs: list[Run], info: dict, rows: list[dict],
                tests: list[dict]) -> None:
    """Every file of a results directory, written into `tmp`."""
    from safetensors.numpy import save_file

    (tmp / ATTENTION).mkdir()
    with (tmp / RECORDS).open("w") as f:
        for run in runs:
            for record in run.records:
                f.write(record.to_json() + "\n")
    for run in runs:
        if run.attention:
            save_file(run.attention, str(tmp / ATTENTION / f"{run.name}.safetensors"))
    resolved = config.model_dump() | {"pool_split": inputs.pool_split, "query_split": inputs.query_split}
    (tmp / CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False))
    pools = {p.config.name: {"task": p.task_name, "split": p.split, "size": len(p.examples),
                             "fingerprint": fingerprint(p.examples)} for p in inputs.pools}
    info = info | {"versions": package_versions(), "pools": pools, "query_fingerprint": fingerprint(inputs.queries),
                   "n_queries": len(inputs.queries)}
    (tmp / RUN_INFO).write_text(json.dumps(info, indent=2))
    write_csv(tmp / SUMMARY_CSV, rows)
    write_csv(tmp / MCNEMAR_CSV, tests)
    (tmp / SUMMARY_MD).write_text(summary_markdown(config, inputs, rows, tests, info))


def summary_markdown(config: CompareConfig, inputs: Inputs, rows: list[dict], tests: list[dict], info: dict) -> str:
    """summary.md: what ran on what, then the accuracy table and the McNemar tests (floats to 4 significant digits)."""
    head = (f"# {inputs.task.name}: {', '.join(s.run_label for s in config.selectors)} "
            f"(k={', '.join(map(str, config.ks))})\n\n"
            f"Model `{config.model}`, encoder `{config.encoder}`, pools "
            f"{', '.join(f'{p.config.name} ({p.task_name} {p.split}, {len(p.examples)})' for p in inputs.pools)}, "
            f"queries {inputs.query_split} ({len(inputs.queries)}), label formats {config.formats}, "
            f"calibrated: {config.calibrate}. Wall time {info['wall_seconds']:.0f} s, "
            f"peak memory {info['peak_rss_mb']:.0f} MB.\n\n")
    body = "## Accuracy (95% bootstrap CI)\n\n" + markdown_table(rows, ".4g")
    if tests:
        body += "\n## Paired McNemar tests (exact)\n\n" + markdown_table(tests, ".4g")
    return head + body
