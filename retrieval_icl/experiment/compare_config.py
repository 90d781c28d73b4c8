"""The typed config of a comparison (`ricl compare`), validated and saved with every result; what it loads is in
inputs.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import RiclError
from ..lm.models import DEFAULT_MODEL
from ..retrieval.encoders import check_encoder_backend
from ..retrieval.sentence_encoder import DEFAULT_ENCODER
from ..selectors.base import make_selector
from ..stats import DEFAULT_MARGIN
from ..yaml_config import read_yaml, validation_message


class SelectorConfig(BaseModel):
    """A selector by registered name, its parameters, and the label its results go under."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    encoder: str | None = None  # its own index over the same pool, e.g. an LM kernel "lm:smollm2-135m:layer=15"
    k: int | None = Field(None, gt=0)  # its own k (adaptive: the most it may show), instead of the config's k sweep
    max_tokens: int | None = Field(None, gt=0)  # a budget: its most relevant demonstrations that fit N prompt tokens
    exclude_near_duplicates: bool = False  # never show a query a pool phrase holding it, inside it, or most like it
    # A selector that calibrates (adaptive fitting its thresholds) does so on the run's own queries by default,
    # cross-fitted: the queries split into `calibration_folds` folds by the seed, each fold's demonstrations chosen by
    # a fit calibrated on the other folds only, so the guarantee is about queries drawn like these. "pool": on a draw
    # from the pool instead, which holds only for queries drawn like the pool.
    # Filled in for a selector that calibrates (saved with the results), None for one that does not.
    calibration: Literal["folds", "pool"] | None = None
    calibration_folds: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _near_duplicates_in_params(self) -> "SelectorConfig":
        """Carry the option in `params` too, which every place that builds the selector passes to make_selector."""
        in_params = self.params.get("exclude_near_duplicates")
        if "exclude_near_duplicates" in self.model_fields_set and in_params not in (None, self.exclude_near_duplicates):
            raise ValueError(f"selector {self.name!r}: exclude_near_duplicates is {self.exclude_near_duplicates} but "
                             f"its params give {in_params!r}; set it once")
        if in_params is True or self.exclude_near_duplicates:
            self.exclude_near_duplicates = True
            self.params = {**self.params, "exclude_near_duplicates": True}
        return self

    @property
    def run_label(self) -> str:
        return self.label or self.name


def check_calibration(sel: SelectorConfig, calibrates: bool) -> None:
    """Refuse calibration settings a selector cannot use; fill in the defaults (5 folds) for one that calibrates."""
    given = [name for name in ("calibration", "calibration_folds") if getattr(sel, name) is not None]
    if given and not calibrates:
        raise ValueError(f"selector {sel.run_label!r}: {' and '.join(given)} is for a selector that calibrates "
                         "(adaptive without given thresholds)")
    if sel.calibration == "pool" and sel.calibration_folds is not None:
        raise ValueError(f"selector {sel.run_label!r}: calibration_folds is for calibration: folds, not pool")
    if calibrates:
        sel.calibration = sel.calibration or "folds"
        sel.calibration_folds = sel.calibration_folds or (5 if sel.calibration == "folds" else None)


class PoolConfig(BaseModel):
    """Where demonstrations come from: the task's pool, a perturbed copy of it, or another task with the same labels."""

    model_config = ConfigDict(extra="forbid")
    name: str = "in_distribution"
    perturb: Literal["typos", "rare_words", "shuffle"] | None = None
    rate: float = Field(0.3, ge=0.0, le=1.0)
    task: str | None = None  # another corpus; its label names must equal the task's
    split: str | None = None


class ColumnsConfig(BaseModel):
    """A user's own files without a task YAML: which columns hold the text(s) and the label, and the label names."""

    model_config = ConfigDict(extra="forbid")
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_field: str = "label"
    label_names: list[str] = Field(min_length=2)


LOCATION_FIELDS = ("output_dir", "index_root")  # where results and indexes go: the same run wherever they are


class CompareConfig(BaseModel):
    """Everything `ricl compare` needs; saved, resolved, next to every result."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None  # a task name or task YAML; or give `columns` and file paths as the splits
    columns: ColumnsConfig | None = None
    data_dir: str | None = None  # a folder laid out like ../shared/data; None reads the Hugging Face hub
    pool_split: str | None = None  # default: the task's
    query_split: str | None = None
    pool_size: int | None = Field(None, gt=0)  # a seeded subsample of the pool
    n_queries: int | None = Field(None, gt=0)  # a seeded subset of the query split
    query_seed: int = 0
    k: int = Field(8, gt=0)
    k_values: list[int] | None = None  # a sweep of k; replaces k when given
    selectors: list[SelectorConfig] = Field(default_factory=lambda: [SelectorConfig(name="random"),
                                                                     SelectorConfig(name="knn")])
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    model: str = DEFAULT_MODEL
    encoder: str = DEFAULT_ENCODER
    encoder_backend: Literal["torch", "bfloat16", "onnx"] = "torch"  # of every index's encoder, so of the queries too
    index_type: Literal["flat", "ivf", "hnsw"] = "flat"
    index_root: str = "indexes"  # each pool's index is saved as <index_root>/<task>-<split>-<pool fingerprint>
    pools: list[PoolConfig] = Field(default_factory=lambda: [PoolConfig()], min_length=1)
    label_format: str = "default"
    label_formats: list[str] | None = None  # several label formats on the same selections; replaces label_format
    calibrate: bool = False
    capture_attention: bool = True
    batch_size: int | None = Field(None, gt=0)  # prompts per forward; default 8 on CPU, no row limit on a GPU
    max_batch_tokens: int | None = Field(None, gt=0)  # padded tokens per forward; default none on CPU, from GPU memory
    max_prompt_tokens: int | None = Field(None, gt=0)  # default: the model's context length
    device: str | None = None
    dtype: str = "auto"
    output_dir: str = "results/compare"
    # Declared before the run, saved with it: the accuracy difference the frontier analysis's non-inferiority and
    # equivalence tests count as negligible (choosing it after seeing results would make the tests meaningless).
    margin: float = Field(DEFAULT_MARGIN, gt=0, lt=1)

    @model_validator(mode="after")
    def _unique_labels(self) -> "CompareConfig":
        if (self.task is None) == (self.columns is None):
            raise ValueError("give either `task` (a name or YAML path) or `columns` (with file paths as the splits)")
        if self.columns is not None and not (self.pool_split and self.query_split):
            raise ValueError("with `columns`, pool_split and query_split must be the paths of your JSONL/CSV files")
        labels = [s.run_label for s in self.selectors]
        if len(set(labels)) != len(labels):
            raise ValueError(f"selector labels must be unique, got {labels}; give each a `label`")
        for sel in self.selectors:
            probe = make_selector(sel.name, **sel.params)  # an unknown name or parameter fails here, before any work
            check_calibration(sel, probe.calibrates)
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        if self.k_values is not None and (not self.k_values or min(self.k_values) <= 0):
            raise ValueError(f"k_values must be positive integers, got {self.k_values}")
        for encoder in [self.encoder, *(s.encoder for s in self.selectors if s.encoder)]:
            try:
                check_encoder_backend(encoder, self.encoder_backend)
            except RiclError as e:
                raise ValueError(str(e)) from None
        return self

    @property
    def ks(self) -> list[int]:
        return self.k_values or [self.k]

    def fingerprinted(self) -> dict[str, Any]:
        """The fields that decide the results: all but where they are written (LOCATION_FIELDS)."""
        return self.model_dump(mode="json", exclude=set(LOCATION_FIELDS))

    def fingerprint(self) -> str:
        """sha256 of `fingerprinted()` as canonical JSON: two configs with the same fingerprint run the same study
        (recorded in run_info.json; an archive made from another fingerprint is not a run of this config)."""
        text = json.dumps(self.fingerprinted(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def formats(self) -> list[str]:
        return self.label_formats or [self.label_format]


def load_compare_config(path: str | Path, **overrides: Any) -> CompareConfig:
    """A CompareConfig from YAML (validated, never executed), with CLI overrides applied."""
    path = Path(path)
    data = read_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CompareConfig(**data)
    except ValidationError as e:
        raise RiclError(validation_message(path, e))
