"""A study: experiment configs crossed with a grid of overrides (tasks x models, say), run, analysed, and gathered.

    experiments: [../experiments/table2.yaml]     # relative to the study file
    grid: {task: [sst2, agnews], model: [smollm2-135m, gemma3-270m]}
    output_root: results/table2                   # one results directory per experiment x grid point
    table2: true                                  # then OUT/table2.md (OUT: archive, else output_root): Table 2
    archive: benchmarks/results/table2            # optional: each run archived there (archive.py), kept in git
    question: {claim: bandwidth, ...}             # optional: the claim it tests, declared before it runs (claims.py)

`ricl study FILE` runs every `ricl compare` whose results directory is missing (or all, with --overwrite), then
`ricl analyze all` and the report in each, then the cross-run table. With `archive`, a run whose archive holds the
same config fingerprint is not run again (so a study can run in parts, on several machines), one whose fingerprint
differs is refused, and the analyses read the archives; with `question`, the claim's tests and figure go beside the
archives and ARCHIVE_ROOT/findings.md gathers every study's verdicts.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .analysis.claims import Question
from .archive_format import ARCHIVE_JSON
from .errors import RiclError
from .experiment.compare_config import CompareConfig, load_compare_config
from .lm.scoring import Scorer
from .results_dir import ANALYSIS, RECORDS, REPORT_MD, RUN_INFO, load_results
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
    archive: str | None = None  # a folder (from the working directory) that keeps each run's archive, in git
    question: Question | None = None  # what the study asks, tested on its archives (needs `archive`)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """The old name of `bandwidth` is an error that names the new one (not pydantic's bare 'extra input')."""
        if isinstance(data, dict) and "tau" in data:
            raise PydanticCustomError("renamed", "tau was renamed bandwidth (the encoder kernel's bandwidth h, 0 = "
                                      "nearest neighbour); write bandwidth: {value}", {"value": data["tau"]})
        return data

    @model_validator(mode="after")
    def _question_needs_archive(self) -> "StudyConfig":
        if self.question is not None and self.archive is None:
            raise ValueError("a study with a question keeps its runs: set `archive` (e.g. benchmarks/results/NAME)")
        return self


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


def study_points(path: str | Path) -> list[tuple[Path, dict[str, Any], CompareConfig]]:
    """Per experiment x grid point: the experiment file, the grid values, and the validated CompareConfig with its
    output_dir under output_root."""
    path = Path(path)
    study = load_study(path)
    keys = list(study.grid)
    points = []
    for experiment in study.experiments:
        for values in itertools.product(*(study.grid[k] for k in keys)):
            name = "-".join([Path(experiment).stem, *(str(v) for v in values)])
            overrides = dict(zip(keys, values)) | {"output_dir": str(Path(study.output_root) / name)}
            points.append((path.parent / experiment, dict(zip(keys, values)),
                           load_compare_config(path.parent / experiment, **overrides)))
    return points


def study_configs(path: str | Path) -> list[CompareConfig]:
    """One validated CompareConfig per experiment x grid point, its output_dir under output_root."""
    return [config for _, _, config in study_points(path)]


def run_study(path: str | Path, overwrite: bool = False, reanalyze: bool = False,
              only: dict[str, str] | None = None, scorer: Scorer | None = None) -> list[Path]:
    """Run the missing comparisons, archive them (with `archive`), analyse each directory or archive whose analyses
    are missing (all with `reanalyze`), write the reports; then the claim's findings (over every archive there) or the
    cross-run Table 2. `only` {grid key: value} runs the matching grid points alone (a study in parts); `scorer`
    scores instead of each config's model (a stand-in in tests). Returns the files of the last step."""
    from .analysis import run_all, write_report
    from .analysis.crossrun import write_cross_run_report

    study = load_study(path)
    split = {"selection_fraction": study.selection_fraction, "selection_n": study.selection_n, "seed": study.seed,
             "n_splits": study.n_splits, "n_null": study.n_null}
    directories = []
    for experiment, values, config in chosen_points(study, Path(path), only or {}):
        directory = run_or_resume(study, config, overwrite, [Path(path), experiment], scorer)
        if reanalyze or not (directory / ANALYSIS / "index.json").exists():
            run_all(load_results(directory), bandwidth=study.bandwidth, **split)
            write_report(directory, html=study.archive is None)  # an archive keeps no HTML (its figures inline)
        directories.append(directory)
    if study.question is not None:
        return study_findings(study, Path(path))
    if not study.table2:
        return [d / REPORT_MD for d in directories]
    return write_cross_run_report(directories, study.archive or study.output_root, study.bandwidth, **split)


def chosen_points(study: StudyConfig, path: Path, only: dict[str, str]) -> list[tuple[Path, dict, CompareConfig]]:
    """The grid points whose values match `only` (compared as text); an unknown key is an error naming the keys."""
    unknown = sorted(set(only) - set(study.grid))
    if unknown:
        raise RiclError(f"--only {unknown[0]}: not a grid key of {path}; its grid keys are {sorted(study.grid)}")
    return [(e, v, c) for e, v, c in study_points(path) if all(str(v[k]) == only[k] for k in only)]


def run_or_resume(study: StudyConfig, config: CompareConfig, overwrite: bool, declared_in: list[Path],
                  scorer: Scorer | None = None) -> Path:
    """The folder the analyses read for one config: its archive when it holds this config's fingerprint (none run),
    else its results directory, run when missing (or with overwrite) and archived when the study keeps archives."""
    from .archive import archive_results, check_resumable
    from .experiment.compare import run_compare

    directory = Path(config.output_dir)
    kept = Path(study.archive) / directory.name if study.archive else None
    if kept is not None and (kept / ARCHIVE_JSON).exists() and not overwrite:
        check_resumable(kept, config)
        log.info("study: %s archived with this config's fingerprint, not run", kept)
        return kept
    if overwrite or not (directory / RECORDS).is_file():
        log.info("study: running %s", directory)
        run_compare(config, overwrite=True, scorer=scorer)
    elif kept is not None:
        check_fingerprint(directory, config)
    if kept is None:
        return directory
    return archive_results(directory, kept, overwrite=True, declared_in=declared_in)


def check_fingerprint(directory: Path, config: CompareConfig) -> None:
    """Refuse a results directory left by another config: archiving it would file its results under this one."""
    info = json.loads((directory / RUN_INFO).read_text(encoding="utf-8"))
    if info.get("config_fingerprint") != config.fingerprint():
        raise RiclError(f"{directory} holds the results of another config (fingerprint "
                        f"{info.get('config_fingerprint')}, this config's is {config.fingerprint()}); rerun the "
                        "study with --overwrite, or move the directory away")


def study_findings(study: StudyConfig, path: Path) -> list[Path]:
    """The claim's tests, verdicts and figure over every archive in the study's archive folder that one of its grid
    points names, then ARCHIVE_ROOT/findings.md."""
    from .analysis.findings import write_findings, write_study_findings

    out = Path(study.archive)
    kept = [out / Path(c.output_dir).name for c in study_configs(path)]
    results = [load_results(d) for d in kept if (d / ARCHIVE_JSON).exists()]
    if not results:
        raise RiclError(f"{out}: no archives of {path} yet; run the study first")
    shown = os.path.relpath(path.resolve())  # as a reader of the findings finds it from the repository root
    written = write_study_findings(study.question, path.stem, results, out, shown)
    return written + write_findings(out.parent)
