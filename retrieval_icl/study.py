"""A study: experiment configs crossed with a grid of overrides (tasks x models, say), run, analysed, and gathered.

    experiments: [../experiments/table2.yaml]     # relative to the study file
    grid: {task: [sst2, agnews], model: [smollm2-135m, gemma3-270m]}
    output_root: results/table2                   # one results directory per experiment x grid point
    table2: true                                  # then OUT/table2.md: Table 2 across the directories

`ricl study FILE` runs every `ricl compare` whose results directory is missing (or all, with --overwrite), then
`ricl analyze all` and the report in each, then the cross-run table.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .errors import RiclError
from .experiment.compare_config import CompareConfig, load_compare_config
from .results_dir import RECORDS, REPORT_MD, load_results
from .yaml_config import read_yaml, validation_message

log = logging.getLogger(__name__)


class StudyConfig(BaseModel):
    """What a study runs and how its analyses choose the best head."""

    model_config = ConfigDict(extra="forbid")
    experiments: list[str] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    output_root: str
    table2: bool = True
    bandwidth: float = Field(0.1, ge=0.0)  # h of the encoder kernel exp((cos - 1) / h); 0 = nearest neighbour
    selection_fraction: float = Field(0.7, gt=0.0, lt=1.0)
    selection_n: int | None = Field(None, gt=0)
    seed: int = 0
    n_splits: int = Field(20, ge=1)  # seeded selection/held-out splits of the Table 2 controls
    n_null: int = Field(200, ge=0)  # label permutations of the null

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """The old name of `bandwidth` is an error that names the new one (not pydantic's bare 'extra input')."""
        if isinstance(data, dict) and "tau" in data:
            raise PydanticCustomError("renamed", "tau was renamed bandwidth (the encoder kernel's bandwidth h, 0 = "
                                      "nearest neighbour); write bandwidth: {value}", {"value": data["tau"]})
        return data


def load_study(path: str | Path) -> StudyConfig:
    """A StudyConfig from YAML, validated; every experiment it names must exist."""
    path = Path(path)
    try:
        study = StudyConfig(**read_yaml(path))
    except ValidationError as e:
        raise RiclError(validation_message(path, e))
    for name in study.experiments:
        if not (path.parent / name).is_file():
            raise RiclError(f"{path}: experiments: {name} not found (relative to {path.parent})")
    return study


def study_configs(path: str | Path) -> list[CompareConfig]:
    """One validated CompareConfig per experiment x grid point, its output_dir under output_root."""
    path = Path(path)
    study = load_study(path)
    keys = list(study.grid)
    configs = []
    for experiment in study.experiments:
        for values in itertools.product(*(study.grid[k] for k in keys)):
            name = "-".join([Path(experiment).stem, *(str(v) for v in values)])
            overrides = dict(zip(keys, values)) | {"output_dir": str(Path(study.output_root) / name)}
            configs.append(load_compare_config(path.parent / experiment, **overrides))
    return configs


def run_study(path: str | Path, overwrite: bool = False) -> list[Path]:
    """Run the missing comparisons, analyse each directory, write the reports; returns the files of the last step."""
    from .analysis import run_all, write_report
    from .analysis.crossrun import write_cross_run_report
    from .experiment.compare import run_compare

    study = load_study(path)
    split = {"selection_fraction": study.selection_fraction, "selection_n": study.selection_n, "seed": study.seed,
             "n_splits": study.n_splits, "n_null": study.n_null}
    directories = []
    for config in study_configs(path):
        directory = Path(config.output_dir)
        if overwrite or not (directory / RECORDS).is_file():
            log.info("study: running %s", directory)
            run_compare(config, overwrite=True)
        else:
            log.info("study: %s exists, kept", directory)
        run_all(load_results(directory), bandwidth=study.bandwidth, **split)
        write_report(directory)
        directories.append(directory)
    if not study.table2:
        return [d / REPORT_MD for d in directories]
    return write_cross_run_report(directories, study.output_root, study.bandwidth, **split)
