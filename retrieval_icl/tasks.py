"""Task specs (configs/tasks/*.yaml) and dataset loading: Hugging Face hub, or local JSONL/CSV files."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import random
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RiclError
from .yaml_config import check_file, not_utf8, read_yaml, validation_message

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
        self._check_label_formats()
        self._check_template()
        return self

    def _check_label_formats(self) -> None:
        self.label_formats.setdefault("default", list(self.label_names))
        for fmt, words in self.label_formats.items():
            if len(words) != len(self.label_names):
                raise ValueError(
                    f"label format {fmt!r} has {len(words)} words, expected one per label ({len(self.label_names)})"
                )
            if len(set(words)) != len(words):
                raise ValueError(f"label format {fmt!r} repeats a word: {words}")

    def _check_template(self) -> None:
        try:
            self.template.input.format(**{f: "" for f in self.text_fields})
        except KeyError as e:
            raise ValueError(f"template.input names {e}, expected only the text fields {self.text_fields}")
        except (IndexError, ValueError, AttributeError) as e:  # `{0}`, `{text`, `{text.x}`: pydantic lets these escape
            raise ValueError(f"template.input {self.template.input!r} is not a format string over {self.text_fields} "
                             f"({e})")
        for field in self.text_fields:
            if "{" + field + "}" not in self.template.input:
                raise ValueError(f"template.input {self.template.input!r} does not use text field {field!r}")

    def label_words(self, label_format: str = "default") -> list[str]:
        """The verbalizer: label id -> the word written after the output prefix."""
        if label_format not in self.label_formats:
            raise RiclError(f"unknown label format {label_format!r} for task {self.name}; "
                            f"known: {sorted(self.label_formats)}")
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


def task_from_columns(text_fields: Sequence[str], label_field: str, label_names: Sequence[str],
                      name: str = "custom") -> TaskSpec:
    """A task for a user's own file with named text and label columns, no YAML needed."""
    fields = list(text_fields)
    if len(set(label_names)) < 2:
        raise RiclError(f"label names {list(label_names)}: expected at least two distinct names, e.g. neg,pos")
    template = PromptTemplate(input="\n".join(f"{f.capitalize()}: {{{f}}}" for f in fields) if len(fields) > 1
                              else f"Input: {{{fields[0]}}}")
    return TaskSpec(name=name, text_fields=fields, label_field=label_field, label_names=list(label_names),
                    template=template)


def _utf8_lines(path: Path) -> Iterator[str]:
    """The file's lines, a leading UTF-8 byte-order mark dropped; bytes that are not UTF-8 text are an error."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise RiclError(f"{path}: cannot read ({e.strerror})")
    with f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # accepted and dropped: Excel and Notepad write it
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, line_no, raw, e.start)
            if "\0" in line:  # never in JSON or in text a person wrote: a binary file, or UTF-16 without a BOM
                raise RiclError(f"{path}:{line_no}: a NUL byte at column {line.index(chr(0)) + 1}; expected UTF-8 text "
                                "(is this a binary or UTF-16 file?)")
            yield line


def _rows_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    for line_no, line in enumerate(_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RiclError(f"{path}:{line_no}: not valid JSON ({e.msg}, column {e.colno}); "
                            "expected one JSON object per line")
        except (ValueError, RecursionError):  # json's limits: integers over 4300 digits, nesting past the stack
            raise RiclError(f"{path}:{line_no}: not valid JSON (a number too long or nesting too deep); "
                            "expected one JSON object per line")
        if not isinstance(row, dict):
            raise RiclError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def _ragged(path: Path, start: int, end: int, row: list[str], header: list[str]) -> RiclError:
    """A row whose field count differs from the header's: said, not guessed at (a stray comma shifts the label)."""
    runs_on = f"; the row runs on to line {end}: an unclosed quote?" if end > start else ""
    return RiclError(f"{path}:{start}: {len(row)} field(s), expected {len(header)} like the header "
                     f"({','.join(header)}){runs_on}")


def _rows_csv(path: Path) -> Iterator[tuple[int, dict]]:
    """(first line, {column: value}) for each row of a CSV file with a header line; blank lines are skipped."""
    reader, header, end = csv.reader(_utf8_lines(path)), None, 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:
                continue
            if header is None:
                header = _csv_header(path, start, row)
            elif len(row) != len(header):
                raise _ragged(path, start, end, row, header)
            else:
                yield start, dict(zip(header, row))
    except csv.Error as e:
        raise RiclError(f"{path}:{reader.line_num}: not valid CSV ({e})")


def _csv_header(path: Path, line_no: int, header: list[str]) -> list[str]:
    """The column names; a repeated one is an error, as a dict would silently keep only its last value."""
    for name in header:
        if header.count(name) > 1:
            raise RiclError(f"{path}:{line_no}: column {name!r} appears {header.count(name)} times in the header; "
                            "expected distinct column names")
    return header


def _label_id(raw: object, task: TaskSpec, where: str) -> int:
    """A label given as an id (int or digit string) or as one of the label names."""
    n = len(task.label_names)
    if isinstance(raw, str) and raw in task.label_names:
        return task.label_names.index(raw)
    try:
        label = int(raw)  # type: ignore[arg-type]
        if isinstance(raw, float) and label != raw:
            raise ValueError("not a whole number")  # int(1.5) would silently pick label 1
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON label of 1e999 is infinity
        raise RiclError(f"{where}: {task.label_field}={reprlib.repr(raw)} is not a label id 0..{n - 1} "
                        f"or one of {task.label_names}")
    if not 0 <= label < n:
        raise RiclError(f"{where}: {task.label_field}={label} is outside the label set 0..{n - 1} ({task.label_names})")
    return label


def _example(row: dict, task: TaskSpec, fallback_id: int, where: str) -> Example:
    texts = []
    for field in task.text_fields:
        if field not in row:
            raise RiclError(f"{where}: no column {field!r}; columns are {sorted(row)}")
        text = row[field]
        if not isinstance(text, str):
            raise RiclError(f"{where}: {field}={reprlib.repr(text)} is not a string ({type(text).__name__}); "
                            "expected text")
        if not text.strip():
            raise RiclError(f"{where}: {field} is empty; every example needs non-empty text")
        texts.append(text.strip())
    if task.label_field not in row:
        raise RiclError(f"{where}: no column {task.label_field!r}; columns are {sorted(row)}")
    return Example(id=fallback_id, texts=tuple(texts), label=_label_id(row[task.label_field], task, where))


# Each example file type: its row reader and the layout an empty file is missing.
_READERS = {".jsonl": (_rows_jsonl, "one JSON object per line"), ".json": (_rows_jsonl, "one JSON object per line"),
            ".csv": (_rows_csv, "a header line, then one row per example")}


def read_examples_file(path: str | Path, task: TaskSpec) -> list[Example]:
    """Examples from one UTF-8 JSONL or CSV file (a UTF-8 byte-order mark is dropped); the id is the row's position,
    so it is stable for a given file. Every problem with the file is a RiclError naming it and, for a row, the line."""
    path = Path(path)
    check_file(path, "a .jsonl or .csv file of examples")
    if path.suffix not in _READERS:
        raise RiclError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl or .csv")
    rows, layout = _READERS[path.suffix]
    examples = [_example(row, task, i, f"{path}:{line}") for i, (line, row) in enumerate(rows(path))]
    if not examples:
        raise RiclError(f"{path}: no examples; expected {layout}")
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
    """All labelled examples of a split: a JSONL/CSV path as the split, `data_dir/<local_name>/<split>.*`, or the
    hub."""
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
