"""The results directory of `ricl compare`, owned here: its file names, its writer, the one table writer (CSV and
Markdown) that every table of the project goes through, and its reader (`load_results`: the records as checked
RunRecords, the config, the attention files). No torch.

    RESULTS_DIR/
      records.jsonl            one RunRecord per run and query (record.py)
      attention/RUN.safetensors  per query "<id>" (layers, heads, demos, 5), "<id>/profile", "<id>/preamble"
      config.yaml              the resolved CompareConfig, splits included
      run_info.json            versions, pools, timings; a directory holding it is one --overwrite may replace
      summary.md, summary.csv  accuracy per run with its 95% bootstrap CI
      mcnemar.csv              each selector against random, paired by query
      analysis/                what `ricl analyze` saves; report.md and report.html gather it

`load_results` reads an archive of one too (archive_format.py: records as gzip JSONL, attention as the label-token
weights and the runs' mean preamble masses only), so the analyses run on either alike.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import yaml

from . import archive_format
from .atomic_dir import atomic_directory, check_replaceable
from .data.examples import fingerprint
from .data.readers import rows_jsonl
from .data.tasks import TaskSpec, load_task
from .errors import RiclError
from .lm.attention_summary import SUMMARY_COLUMNS, checked_summaries
from .record import RunRecord
from .yaml_config import read_yaml

if TYPE_CHECKING:
    from .experiment.assemble import Run
    from .experiment.compare_config import CompareConfig
    from .experiment.inputs import Inputs

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
ATTENTION_CACHE_RUNS = 4  # runs whose attention arrays a Results keeps in memory

log = logging.getLogger(__name__)


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
            save_file(run.attention, str(tmp / ATTENTION / f"{run.id.name}.safetensors"))
    resolved = config.model_dump() | {"pool_split": inputs.pool_split, "query_split": inputs.query_split}
    (tmp / CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False))
    pools = {p.config.name: {"task": p.task_name, "split": p.split, "size": len(p.examples),
                             "fingerprint": fingerprint(p.examples)} for p in inputs.pools}
    info = info | {"versions": package_versions(), "pools": pools, "query_fingerprint": fingerprint(inputs.queries),
                   "n_queries": len(inputs.queries), "config_fingerprint": config.fingerprint()}
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


@dataclass
class Results:
    """One results directory, read: its records (one checked RunRecord per run and query, in file order), the
    resolved config, and the attention files (read per run when asked, a few runs kept)."""

    directory: Path
    records: list[RunRecord]
    config: dict = field(default_factory=dict)
    archived: bool = False  # read from an archive: its attention holds ARCHIVED_COLUMNS only
    _attention: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def analysis_dir(self) -> Path:
        """RESULTS_DIR/analysis, created on first use."""
        path = self.directory / ANALYSIS
        path.mkdir(exist_ok=True)
        return path

    @property
    def n_labels(self) -> int:
        return len(self.records[0].label_log_probs)

    @property
    def task(self) -> str:
        return self.records[0].task

    def runs(self, names: Iterable[str] | None = None) -> dict[str, list[RunRecord]]:
        """Run name -> its records, in file order; `names` restricts to those runs (an unknown one is an error)."""
        by_run: dict[str, list[RunRecord]] = {}
        for r in self.records:
            by_run.setdefault(r.run, []).append(r)
        if names is None:
            return by_run
        unknown = [n for n in names if n not in by_run]
        if unknown:
            raise RiclError(f"no run named {unknown[0]!r} in {self.directory}; runs are {sorted(by_run)}")
        return {n: by_run[n] for n in names}

    def main_runs(self) -> list[str]:
        """The runs under the first label format and the first pool (the experiment's main condition)."""
        fmt, pool = self.records[0].label_format, self.records[0].pool
        return list(dict.fromkeys(r.run for r in self.records if r.label_format == fmt and r.pool == pool))

    @property
    def attention_kept(self) -> tuple[str, ...]:
        """What the attention arrays hold: every summary column, the preamble mass and the profile; an archive keeps
        the label-token weights (y_mass) and each run's mean preamble mass, its summaries NaN in the other columns."""
        return archive_format.ARCHIVED_COLUMNS if self.archived else (*SUMMARY_COLUMNS, "preamble", "profile")

    def attention_path(self, run: str) -> Path:
        suffix = archive_format.ATTENTION_SUFFIX if self.archived else ".safetensors"
        return self.directory / ATTENTION / f"{run}{suffix}"

    def has_attention(self, run: str) -> bool:
        return self.attention_path(run).exists()

    def runs_with_attention(self, names: Iterable[str] | None = None) -> list[str]:
        """The runs (of `names`, default all) whose attention was captured; an error when there are none."""
        runs = list(self.runs(names))
        found = [r for r in runs if self.has_attention(r)]
        if not found:
            raise RiclError(f"no attention captured in {self.directory / ATTENTION} for runs {runs}; "
                            "rerun `ricl compare` with capture_attention: true")
        return found

    def summaries(self, run: str) -> list[np.ndarray]:
        """Per record of the run, in order: (layers, heads, n_demos, 5) float32 attention summary."""
        arrays = self._load_attention(run)
        return [arrays[str(r.query_id)] for r in self.runs([run])[run]]

    def preambles(self, run: str) -> list[np.ndarray]:
        """Per record of the run, in order: (layers, heads) float32 attention mass on the preamble (the sink)."""
        if self.archived:
            raise RiclError(f"{self.directory}: an archive keeps each run's preamble mass averaged over its queries "
                            "(preamble_mean), not each query's")
        arrays = self._load_attention(run)
        return [arrays[f"{r.query_id}/preamble"] for r in self.runs([run])[run]]

    def preamble_mean(self, run: str) -> np.ndarray:
        """(layers, heads) float32: the run's attention mass on the preamble, averaged over its queries."""
        if self.archived:
            return self._load_attention(run)["preamble_mean"]
        return np.mean(self.preambles(run), axis=0, dtype=np.float32)

    def profiles(self, run: str) -> list[np.ndarray]:
        """Per record of the run, in order: (layers, n_demos, bins) float32 head-averaged attention profile."""
        arrays = self._load_attention(run)
        path = self.attention_path(run)
        out = []
        for r in self.runs([run])[run]:
            key = f"{r.query_id}/profile"
            if key not in arrays:
                raise RiclError(f"{path}: no attention profile {key!r}; an archive keeps none, and a results directory "
                                "written before profiles were captured needs `ricl compare` again")
            out.append(arrays[key])
        return out

    def _load_attention(self, run: str) -> dict[str, np.ndarray]:
        if run not in self._attention:
            if len(self._attention) >= ATTENTION_CACHE_RUNS:
                self._attention.pop(next(iter(self._attention)))  # the least recently loaded run
            path, records = self.attention_path(run), self.runs([run])[run]
            read = archive_format.load_archived_attention if self.archived else load_attention
            self._attention[run] = read(path, records)
        return self._attention[run]

    def label_names(self) -> list[str]:
        """The task's label names (from the config's columns or task YAML); label ids as text when unknown."""
        columns = self.config.get("columns") or {}
        if columns.get("label_names"):
            return list(columns["label_names"])
        spec = self._task_spec()
        return list(spec.label_names) if spec else [str(i) for i in range(self.n_labels)]

    def label_words_from_task_spec(self, label_format: str) -> list[str] | None:
        """The words the task's spec (its YAML, loaded now: the records do not hold them) gives a label format, per
        label id; None when the task or the format is not found. TaskSpec.label_words is the verbalizer itself, which
        refuses an unknown format."""
        spec = self._task_spec()
        if spec is None or label_format not in spec.label_formats:
            return None
        return list(spec.label_formats[label_format])

    def _task_spec(self) -> TaskSpec | None:
        try:
            return load_task(self.config.get("task") or self.task)
        except RiclError as e:
            log.info("task spec unavailable (%s); using label ids", e)
            return None

    def selector_specs(self) -> dict[str, dict]:
        """Selector label -> {"name": registered name, "params": {...}} from config.yaml (label = name if unknown)."""
        specs = {}
        for s in self.config.get("selectors") or []:
            specs[s.get("label") or s["name"]] = {"name": s["name"], "params": dict(s.get("params") or {})}
        for label in {r.selector for r in self.records} - set(specs):
            specs[label] = {"name": label, "params": {}}
        return specs

    def selector_fits(self) -> dict[str, dict]:
        """Run name -> what its selector fitted (run_info.json's selector_fits; {} when none was saved)."""
        path = self.directory / RUN_INFO
        if not path.exists():
            return {}
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RiclError(f"{path}: not valid JSON ({e})") from None
        fits = info.get("selector_fits") if isinstance(info, dict) else None
        return fits if isinstance(fits, dict) else {}

    def pool_order(self) -> list[str]:
        """Pool names as configured (the first is the reference pool), then any others seen in the records."""
        names = [p["name"] for p in self.config.get("pools") or [] if isinstance(p, dict) and "name" in p]
        return names + [p for p in dict.fromkeys(r.pool for r in self.records) if p not in names]


def load_results(directory: str | Path) -> Results:
    """Read RESULTS_DIR/records.jsonl, each line checked as a RunRecord (errors name file:line), and config.yaml;
    attention files are read lazily per run."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RiclError(f"{directory}: no such results directory (expected the output_dir of `ricl compare`)")
    archived = (directory / archive_format.ARCHIVE_JSON).exists()
    path = directory / (archive_format.ARCHIVED_RECORDS if archived else RECORDS)
    if not path.exists():
        raise RiclError(f"{path}: no such file; {directory} is not a `ricl compare` results directory or archive")
    if archived:
        records = archive_format.read_records(path, archive_format.read_archive_json(directory)["runs"])
    else:
        records = [RunRecord.check(row, where) for where, row in rows_jsonl(path)]
    if not records:
        raise RiclError(f"{path}: no records")
    n_labels = {len(r.label_log_probs) for r in records}
    if len(n_labels) != 1:
        raise RiclError(f"{path}: records disagree on the number of labels ({sorted(n_labels)})")
    return Results(directory, records, read_config(directory / CONFIG), archived)


def read_config(path: Path) -> dict:
    """The resolved config saved next to the records ({} when absent)."""
    if not path.exists():
        log.warning("%s not found; selector parameters and label names are unknown", path)
        return {}
    return read_yaml(path)


def load_attention(path: Path, records: list[RunRecord]) -> dict[str, np.ndarray]:
    """A run's attention file as float32 arrays, checked against its records: one (L, H, n_demos, 5) entry each."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.exists():
        raise RiclError(f"no attention captured for run {records[0].run!r}: {path} does not exist "
                        "(rerun `ricl compare` with capture_attention: true)")
    try:
        arrays = {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as e:
        raise RiclError(f"{path}: not a readable safetensors file ({e})")
    return checked_summaries(path, arrays, [(str(r.query_id), len(r.demo_ids)) for r in records])
