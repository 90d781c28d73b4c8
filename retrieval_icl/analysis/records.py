"""A results directory of `ricl compare`, loaded and checked: records.jsonl, attention/<run>.safetensors,
config.yaml."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable

import numpy as np

from ..attention_summary import N_SUMMARY_COLUMNS
from ..errors import RiclError
from ..readers import rows_jsonl
from ..record import RunRecord
from ..yaml_config import read_yaml

log = logging.getLogger(__name__)

ATTENTION_CACHE_RUNS = 4  # runs whose attention arrays stay in memory


@dataclass
class Results:
    """One results directory: its records (one per run and query, file order), resolved config, attention files."""

    directory: Path
    records: list[dict]
    config: dict = field(default_factory=dict)
    _attention: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def analysis_dir(self) -> Path:
        """RESULTS_DIR/analysis, created on first use."""
        path = self.directory / "analysis"
        path.mkdir(exist_ok=True)
        return path

    @property
    def n_labels(self) -> int:
        return len(self.records[0]["label_log_probs"])

    @property
    def task(self) -> str:
        return str(self.records[0]["task"])

    def runs(self, names: Iterable[str] | None = None) -> dict[str, list[dict]]:
        """Run name -> its records, in file order; `names` restricts to those runs (an unknown one is an error)."""
        by_run: dict[str, list[dict]] = {}
        for r in self.records:
            by_run.setdefault(r["run"], []).append(r)
        if names is None:
            return by_run
        unknown = [n for n in names if n not in by_run]
        if unknown:
            raise RiclError(f"no run named {unknown[0]!r} in {self.directory}; runs are {sorted(by_run)}")
        return {n: by_run[n] for n in names}

    def main_runs(self) -> list[str]:
        """The runs under the first label format and the first pool (the experiment's main condition)."""
        fmt, pool = self.records[0]["label_format"], self.records[0]["pool"]
        return list(dict.fromkeys(r["run"] for r in self.records if r["label_format"] == fmt and r["pool"] == pool))

    def attention_path(self, run: str) -> Path:
        return self.directory / "attention" / f"{run}.safetensors"

    def has_attention(self, run: str) -> bool:
        return self.attention_path(run).exists()

    def runs_with_attention(self, names: Iterable[str] | None = None) -> list[str]:
        """The runs (of `names`, default all) whose attention was captured; an error when there are none."""
        runs = list(self.runs(names))
        found = [r for r in runs if self.has_attention(r)]
        if not found:
            raise RiclError(f"no attention captured in {self.directory / 'attention'} for runs {runs}; "
                            "rerun `ricl compare` with capture_attention: true")
        return found

    def summaries(self, run: str) -> list[np.ndarray]:
        """Per record of the run, in order: (layers, heads, n_demos, 5) float32 attention summary."""
        arrays = self._load_attention(run)
        return [arrays[str(r["query_id"])] for r in self.runs([run])[run]]

    def preambles(self, run: str) -> list[np.ndarray]:
        """Per record of the run, in order: (layers, heads) float32 attention mass on the preamble (the sink)."""
        arrays = self._load_attention(run)
        return [arrays[f"{r['query_id']}/preamble"] for r in self.runs([run])[run]]

    def profiles(self, run: str) -> list[np.ndarray]:
        """Per record of the run, in order: (layers, n_demos, bins) float32 head-averaged attention profile."""
        arrays = self._load_attention(run)
        path = self.attention_path(run)
        out = []
        for r in self.runs([run])[run]:
            key = f"{r['query_id']}/profile"
            if key not in arrays:
                raise RiclError(f"{path}: no attention profile {key!r}; rerun `ricl compare` to capture profiles")
            out.append(arrays[key])
        return out

    def _load_attention(self, run: str) -> dict[str, np.ndarray]:
        if run not in self._attention:
            if len(self._attention) >= ATTENTION_CACHE_RUNS:
                self._attention.pop(next(iter(self._attention)))  # the least recently loaded run
            self._attention[run] = load_attention(self.attention_path(run), self.runs([run])[run])
        return self._attention[run]

    def label_names(self) -> list[str]:
        """The task's label names (from the config's columns or task YAML); label ids as text when unknown."""
        columns = self.config.get("columns") or {}
        if columns.get("label_names"):
            return list(columns["label_names"])
        spec = self._task_spec()
        return list(spec.label_names) if spec else [str(i) for i in range(self.n_labels)]

    def label_words(self, label_format: str) -> list[str] | None:
        """The words a label format writes for the label ids, or None when the task cannot be loaded."""
        spec = self._task_spec()
        if spec is None or label_format not in spec.label_formats:
            return None
        return list(spec.label_formats[label_format])

    def _task_spec(self):
        from ..tasks import load_task

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
        for label in {r["selector"] for r in self.records} - set(specs):
            specs[label] = {"name": label, "params": {}}
        return specs

    def pool_order(self) -> list[str]:
        """Pool names as configured (the first is the reference pool), then any others seen in the records."""
        names = [p["name"] for p in self.config.get("pools") or [] if isinstance(p, dict) and "name" in p]
        return names + [p for p in dict.fromkeys(r["pool"] for r in self.records) if p not in names]


def load_results(directory: str | Path) -> Results:
    """Read and check RESULTS_DIR/records.jsonl and config.yaml; attention files are read lazily per run."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RiclError(f"{directory}: no such results directory (expected the output_dir of `ricl compare`)")
    path = directory / "records.jsonl"
    if not path.exists():
        raise RiclError(f"{path}: no such file; {directory} is not a `ricl compare` results directory")
    records = [RunRecord.check(row, where) for where, row in rows_jsonl(path)]
    if not records:
        raise RiclError(f"{path}: no records")
    n_labels = {len(r["label_log_probs"]) for r in records}
    if len(n_labels) != 1:
        raise RiclError(f"{path}: records disagree on the number of labels ({sorted(n_labels)})")
    return Results(directory, records, read_config(directory / "config.yaml"))


def read_config(path: Path) -> dict:
    """The resolved config saved next to the records ({} when absent)."""
    if not path.exists():
        log.warning("%s not found; selector parameters and label names are unknown", path)
        return {}
    return read_yaml(path)


def load_attention(path: Path, records: list[dict]) -> dict[str, np.ndarray]:
    """A run's attention file as float32 arrays, checked against its records: one (L, H, n_demos, 5) entry each."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.exists():
        raise RiclError(f"no attention captured for run {records[0]['run']!r}: {path} does not exist "
                        "(rerun `ricl compare` with capture_attention: true)")
    try:
        arrays = {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as e:
        raise RiclError(f"{path}: not a readable safetensors file ({e})")
    shapes = set()
    for r in records:
        key, n = str(r["query_id"]), len(r["demo_ids"])
        if key not in arrays:
            raise RiclError(f"{path}: no entry for query {key} (expected one per record of run {r['run']})")
        shape = arrays[key].shape
        if len(shape) != 4 or shape[2:] != (n, N_SUMMARY_COLUMNS):
            raise RiclError(f"{path}: entry {key} has shape {shape}, "
                            f"expected (layers, heads, {n}, {N_SUMMARY_COLUMNS})")
        preamble = arrays.get(f"{key}/preamble")
        if preamble is None or preamble.shape != shape[:2]:
            raise RiclError(f"{path}: entry {key}/preamble is {'missing' if preamble is None else preamble.shape}, "
                            f"expected the preamble's attention mass, shape {shape[:2]} (rerun `ricl compare`)")
        shapes.add(shape[:2])
    if len(shapes) > 1:
        raise RiclError(f"{path}: entries disagree on (layers, heads): {sorted(shapes)}")
    return arrays


def group_by(records: Iterable[dict], key: Callable[[dict], Hashable]) -> dict[Hashable, list[dict]]:
    """Records grouped by key(record), groups and records in first-seen order."""
    groups: dict[Hashable, list[dict]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return groups


def most_common(values: Iterable[Hashable]) -> Hashable:
    """The most frequent value (the first seen among ties)."""
    return Counter(values).most_common(1)[0][0]
