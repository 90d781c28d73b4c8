"""Task specs (configs/tasks/*.yaml) and dataset loading: Hugging Face hub, or local JSONL/CSV files."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RiclError
from .yaml_config import read_yaml, validation_message

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent.parent / "configs" / "tasks"


@dataclass(frozen=True)
class Example:
    """One labelled input: `texts` holds the task's text fields in order (one or two)."""

    id: int
    texts: tuple[str, ...]
    label: int

    @property
    def text(self) -> str:
        """The text an encoder embeds: the fields joined by a newline."""
        return "\n".join(self.texts)


class PromptTemplate(BaseModel):
    """How one example is written: `input` formats the text fields by name, then `output`, then the label."""

    model_config = ConfigDict(extra="forbid")
    input: str = "Input: {text}"
    output: str = "Output:"
    input_output_separator: str = "\n"
    label_prefix: str = " "
    demo_separator: str = "\n\n"
    instruction: str = ""


class DatasetSource(BaseModel):
    """Where a task's data lives: a hub dataset (path, config) and the folder name under a local data dir."""

    model_config = ConfigDict(extra="forbid")
    hub_path: str | None = None
    hub_config: str | None = None
    local_name: str | None = None
    local_splits: dict[str, str] = Field(default_factory=dict)  # hub split name -> local file stem


class TaskSpec(BaseModel):
    """A classification task: which fields are text, which is the label, the label names and formats."""

    model_config = ConfigDict(extra="forbid")
    name: str
    source: DatasetSource = Field(default_factory=DatasetSource)
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_field: str = "label"
    label_names: list[str] = Field(min_length=2)
    pool_split: str = "train"
    query_split: str = "validation"
    template: PromptTemplate = Field(default_factory=PromptTemplate)
    label_formats: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "TaskSpec":
        self.label_formats.setdefault("default", list(self.label_names))
        for fmt, words in self.label_formats.items():
            if len(words) != len(self.label_names):
                raise ValueError(
                    f"label format {fmt!r} has {len(words)} words, expected one per label ({len(self.label_names)})"
                )
            if len(set(words)) != len(words):
                raise ValueError(f"label format {fmt!r} repeats a word: {words}")
        for field in self.text_fields:
            try:
                self.template.input.format(**{f: "" for f in self.text_fields})
            except KeyError as e:
                raise ValueError(f"template.input names {e}, expected only the text fields {self.text_fields}")
            if "{" + field + "}" not in self.template.input:
                raise ValueError(f"template.input {self.template.input!r} does not use text field {field!r}")
        return self

    def label_words(self, label_format: str = "default") -> list[str]:
        """The verbalizer: label id -> the word written after the output prefix."""
        if label_format not in self.label_formats:
            raise RiclError(f"unknown label format {label_format!r} for task {self.name}; known: {sorted(self.label_formats)}")
        return self.label_formats[label_format]


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A task by name (configs/tasks/NAME.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = TASKS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise RiclError(f"unknown task {name_or_path!r}; known: {known_tasks()} (or give a task YAML path)")
    try:
        return TaskSpec(**read_yaml(path))
    except ValidationError as e:
        raise RiclError(validation_message(path, e))


def known_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def task_from_columns(text_fields: Sequence[str], label_field: str, label_names: Sequence[str], name: str = "custom") -> TaskSpec:
    """A task for a user's own file with named text and label columns, no YAML needed."""
    fields = list(text_fields)
    if len(set(label_names)) < 2:
        raise RiclError(f"label names {list(label_names)}: expected at least two distinct names, e.g. neg,pos")
    template = PromptTemplate(input="\n".join(f"{f.capitalize()}: {{{f}}}" for f in fields) if len(fields) > 1 else f"Input: {{{fields[0]}}}")
    return TaskSpec(name=name, text_fields=fields, label_field=label_field, label_names=list(label_names), template=template)


def _utf8_lines(path: Path, newline: str | None = None) -> Iterator[str]:
    """The file's lines; a byte that is not UTF-8 is an error naming the file and line."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RiclError(f"{path}:{line_no}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                "save the file as UTF-8")


def _rows_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RiclError(f"{path}:{line_no}: not valid JSON ({e.msg})")
        if not isinstance(row, dict):
            raise RiclError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def _rows_csv(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        for line_no, row in enumerate(csv.DictReader(_utf8_lines(path)), 2):
            yield line_no, row
    except csv.Error as e:
        raise RiclError(f"{path}: not valid CSV ({e})")


def _label_id(raw: object, task: TaskSpec, where: str) -> int:
    """A label given as an id (int or digit string) or as one of the label names."""
    n = len(task.label_names)
    if isinstance(raw, str) and raw in task.label_names:
        return task.label_names.index(raw)
    try:
        label = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RiclError(f"{where}: {task.label_field}={raw!r} is not a label id 0..{n - 1} or one of {task.label_names}")
    if not 0 <= label < n:
        raise RiclError(f"{where}: {task.label_field}={label} is outside the label set 0..{n - 1} ({task.label_names})")
    return label


def _example(row: dict, task: TaskSpec, fallback_id: int, where: str) -> Example:
    texts = []
    for field in task.text_fields:
        if field not in row:
            raise RiclError(f"{where}: no column {field!r}; columns are {sorted(row)}")
        text = row[field]
        if not isinstance(text, str) or not text.strip():
            raise RiclError(f"{where}: {field} is empty; every example needs non-empty text")
        texts.append(text.strip())
    if task.label_field not in row:
        raise RiclError(f"{where}: no column {task.label_field!r}; columns are {sorted(row)}")
    return Example(id=fallback_id, texts=tuple(texts), label=_label_id(row[task.label_field], task, where))


def read_examples_file(path: str | Path, task: TaskSpec) -> list[Example]:
    """Examples from one JSONL or CSV file; the id is the row's position, so it is stable for a given file."""
    path = Path(path)
    if not path.exists():
        raise RiclError(f"{path}: no such file")
    rows = {".jsonl": _rows_jsonl, ".json": _rows_jsonl, ".csv": _rows_csv}.get(path.suffix)
    if rows is None:
        raise RiclError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl or .csv")
    examples = [_example(row, task, i, f"{path}:{line}") for i, (line, row) in enumerate(rows(path))]
    if not examples:
        raise RiclError(f"{path}: no examples")
    return examples


def _local_file(task: TaskSpec, split: str, data_dir: Path) -> Path:
    folder = data_dir / (task.source.local_name or task.name)
    split = task.source.local_splits.get(split, split)
    for suffix in (".jsonl", ".csv"):
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    raise RiclError(f"no split {split!r} for task {task.name} under {folder} (expected {split}.jsonl or {split}.csv)")


def _hub_examples(task: TaskSpec, split: str) -> list[Example]:
    import datasets

    if task.source.hub_path is None:
        raise RiclError(f"task {task.name} names no hub dataset; pass a data dir with {task.name}/{split}.jsonl")
    ds = datasets.load_dataset(task.source.hub_path, task.source.hub_config, split=split)
    where = f"hub {task.source.hub_path}/{task.source.hub_config or ''}:{split}"
    return [_example(row, task, i, f"{where} row {i}") for i, row in enumerate(ds)]


def load_examples(task: TaskSpec, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """All labelled examples of a split: a JSONL/CSV path as the split, `data_dir/<local_name>/<split>.*`, or the hub."""
    if Path(split).suffix in (".jsonl", ".json", ".csv"):
        return read_examples_file(split, task)
    if data_dir is None:
        return _hub_examples(task, split)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise RiclError(f"{data_dir}: data dir does not exist")
    return read_examples_file(_local_file(task, split, data_dir), task)


def sample_examples(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded subset of n examples in their original order (all of them when n is None or too large)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise RiclError(f"n must be a positive integer, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def fingerprint(examples: Sequence[Example]) -> str:
    """A short hash of the examples' ids, texts and labels: two pools with the same fingerprint are the same."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.texts, ex.label]).encode())
    return h.hexdigest()[:16]
