"""Task specs (task_configs/*.yaml, package data) and dataset loading: a Hugging Face dataset (by a task's hub path,
or by name or save_to_disk folder without a task), or local JSONL/CSV/Parquet files (readers.py)."""

from __future__ import annotations

import logging
import reprlib
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import RiclError
from ..yaml_config import check_file, read_yaml, validation_message
from .examples import Example
from .readers import READERS

log = logging.getLogger(__name__)

# Inside the package, so an installed (not editable) copy finds the built-in tasks too.
TASKS_DIR = Path(__file__).resolve().parents[1] / "task_configs"


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
    """A task by name (task_configs/NAME.yaml) or by the path of a YAML file."""
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
    if not 1 <= len(fields) <= 2:
        raise RiclError(f"text fields {fields}: expected one or two text columns, e.g. review or premise,hypothesis")
    template = PromptTemplate(input="\n".join(f"{f.capitalize()}: {{{f}}}" for f in fields) if len(fields) > 1
                              else f"Input: {{{fields[0]}}}")
    try:
        return TaskSpec(name=name, text_fields=fields, label_field=label_field, label_names=list(label_names),
                        template=template)
    except ValidationError as e:  # a repeated label name, a field name that is no format key: one line, not a dump
        raise RiclError(f"text fields {fields}, labels {list(label_names)}: {e.errors()[0]['msg']}")


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


def read_examples_file(path: str | Path, task: TaskSpec) -> list[Example]:
    """Examples from one UTF-8 JSONL or CSV file (a UTF-8 byte-order mark is dropped) or Parquet file; the id is the
    row's position, so it is stable for a given file. Every problem with the file is a RiclError naming it and, for a
    row, the line (for Parquet, `row N`, N counted from 0)."""
    path = Path(path)
    check_file(path, "a .jsonl, .csv or .parquet file of examples")
    if path.suffix not in READERS:
        raise RiclError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl, .csv or .parquet")
    rows, layout = READERS[path.suffix]
    examples = [_example(row, task, i, where) for i, (where, row) in enumerate(rows(path))]
    if not examples:
        raise RiclError(f"{path}: no examples; expected {layout}")
    return examples


_SPLIT_SUFFIXES = (".jsonl", ".csv", ".parquet")  # a data dir's NAME/SPLIT file, the first that exists


def _local_file(task: TaskSpec, split: str, data_dir: Path) -> Path:
    folder = data_dir / (task.source.local_name or task.name)
    split = task.source.local_splits.get(split, split)
    for suffix in _SPLIT_SUFFIXES:
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    raise RiclError(f"no split {split!r} for task {task.name} under {folder} "
                    f"(expected {split}.jsonl, {split}.csv or {split}.parquet)")


def _dataset_examples(ds: Any, task: TaskSpec, where: str) -> list[Example]:
    """Examples from a `datasets.Dataset`, the id being the row's position; an error names `where` and `row N`."""
    return [_example(row, task, i, f"{where} row {i}") for i, row in enumerate(ds)]


def _hub_examples(task: TaskSpec, split: str) -> list[Example]:
    import datasets

    if task.source.hub_path is None:
        raise RiclError(f"task {task.name} names no hub dataset; pass a data dir with {task.name}/{split}.jsonl")
    ds = datasets.load_dataset(task.source.hub_path, task.source.hub_config, split=split)
    return _dataset_examples(ds, task, f"hub {task.source.hub_path}/{task.source.hub_config or ''}:{split}")


def hf_dataset_examples(name: str | Path, split: str, text_fields: Sequence[str], label_field: str = "label",
                        label_names: Sequence[str] | None = None,
                        config: str | None = None) -> tuple[TaskSpec, list[Example]]:
    """One split of a Hugging Face dataset without a task YAML, and the task made from its columns (task_from_columns).

    `name` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`, or else a hub id loaded with
    `datasets.load_dataset(name, config, split=split)` (the hub or its cache must be reachable). The label names are
    `label_names` in id order, else those of the label column's ClassLabel feature. Errors name dataset, split, row."""
    folder = Path(name)
    where = f"dataset {name}{f' ({config})' if config else ''} split {split}"
    ds = _saved_split(folder, split, config, where) if folder.exists() else _hub_split(str(name), config, split)
    columns = list(dict.fromkeys([*text_fields, label_field]))
    for column in columns:
        if column not in ds.column_names:
            raise RiclError(f"{where}: no column {column!r}; columns are {sorted(ds.column_names)}")
    names = list(label_names) if label_names else _class_label_names(ds, label_field, where)
    task_name = folder.resolve().name if folder.exists() else str(name)  # a folder's name, else the hub id
    task = task_from_columns(text_fields, label_field, names, name=task_name)
    examples = _dataset_examples(ds.select_columns(columns), task, where)  # unused columns (images) not decoded
    if not examples:
        raise RiclError(f"{where}: no examples; expected at least one row")
    return task, examples


def _saved_split(folder: Path, split: str, config: str | None, where: str) -> Any:
    """The split of a folder written by save_to_disk: a DatasetDict's split, or a Dataset saved on its own."""
    import datasets

    if not folder.is_dir():
        raise RiclError(f"{folder}: a file, not a dataset folder; read a file of examples with --file "
                        "(read_examples_file)")
    if config is not None:
        raise RiclError(f"{folder}: a saved dataset has no configs; give --hf-config only with a hub id")
    try:
        saved = datasets.load_from_disk(str(folder))
    except FileNotFoundError as e:  # datasets says "neither a `Dataset` directory nor a `DatasetDict` directory"
        raise RiclError(f"{folder}: not a dataset folder ({e}); expected one written by save_to_disk, or a hub id")
    except IndexError:  # datasets 5 saves a split of no rows as no shards, then cannot concatenate them on load
        raise RiclError(f"{folder}: datasets cannot load it back: a split saved with no rows? Save it without "
                        "that split, or with save_to_disk(..., num_shards=1)") from None
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise RiclError(f"{where}: no such split; the splits are {list(saved)}")
        return saved[split]
    if saved.split is not None and str(saved.split) != split:  # a Dataset saved on its own may record its split
        raise RiclError(f"{where}: no such split; the folder holds split {str(saved.split)!r} only")
    return saved


def _hub_split(name: str, config: str | None, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    # offline: ConnectionError; an unknown id: DatasetNotFoundError (an OSError); a wrong split or config: ValueError
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RiclError(f"hub dataset {name!r}, split {split!r}: cannot load ({reason}); expected a hub id (with the "
                        "hub or its cache reachable) or a folder written by save_to_disk")


def _class_label_names(ds: Any, label_field: str, where: str) -> list[str]:
    """The names of the label column's ClassLabel feature; any other column needs the names given."""
    import datasets

    feature = ds.features[label_field]
    if not isinstance(feature, datasets.ClassLabel):
        kind = getattr(feature, "dtype", type(feature).__name__)
        raise RiclError(f"{where}: column {label_field!r} holds {kind}, not a ClassLabel with names; give the label "
                        "names in id order (--labels neg,pos)")
    return list(feature.names)


def load_examples(task: TaskSpec, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """All labelled examples of a split: a JSONL/CSV/Parquet path as the split, `data_dir/<local_name>/<split>.*`, or
    the hub."""
    if Path(split).suffix in READERS:
        return read_examples_file(split, task)
    if data_dir is None:
        return _hub_examples(task, split)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise RiclError(f"{data_dir}: data dir does not exist")
    return read_examples_file(_local_file(task, split, data_dir), task)
