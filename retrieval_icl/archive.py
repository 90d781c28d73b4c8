"""`ricl archive`: a results directory kept in git as a compact copy (archive_format.py) that `ricl analyze`, `ricl
report` and `ricl study` read as they read the directory, and the fingerprint check a study resumes by.

    ricl archive results/bandwidth/sst2_bandwidth-smollm2-135m-0
        -> benchmarks/results/bandwidth/sst2_bandwidth-smollm2-135m-0/

An archive keeps config.yaml, run_info.json, the summary and McNemar tables, every record (gzip JSONL) and, of the
attention, what the study analyses read: each demonstration's label-token weight per layer and head, and the
preamble mass, as 8-bit log codes. It says in archive.json how much the codes moved each run's best head and its
held-out agreement (`quantisation`), the config's fingerprint, and the commit its configs were declared in.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from .archive_format import (
    ARCHIVE_FORMAT,
    ARCHIVE_JSON,
    ARCHIVE_VERSION,
    ARCHIVED_COLUMNS,
    ARCHIVED_RECORDS,
    ATTENTION_SUFFIX,
    MAX_RELATIVE_ERROR,
    STEPS_PER_OCTAVE,
    encode_attention,
    read_archive_json,
    write_records,
)
from .atomic_dir import atomic_directory
from .errors import RiclError
from .results_dir import (
    ATTENTION,
    CONFIG,
    MCNEMAR_CSV,
    RUN_INFO,
    SUMMARY_CSV,
    SUMMARY_MD,
    Results,
    load_attention,
    load_results,
    read_config,
)

ARCHIVE_ROOT = Path("benchmarks/results")
COPIED = (CONFIG, RUN_INFO, SUMMARY_MD, SUMMARY_CSV, MCNEMAR_CSV)

log = logging.getLogger(__name__)


def default_archive_dir(results_dir: Path) -> Path:
    """benchmarks/results/<the results directory's parent folder>/<its name>: results/<study>/<run> keeps its names."""
    results_dir = Path(results_dir).resolve()
    return ARCHIVE_ROOT / results_dir.parent.name / results_dir.name


def archive_results(results_dir: Path, out: Path | None = None, overwrite: bool = False,
                    declared_in: Sequence[Path] = ()) -> Path:
    """Write the archive of a results directory (atomically) and return its folder. `declared_in`: the config files
    the run comes from; each must be committed unchanged in git (the question is declared before the answer), and the
    commit is recorded. An existing archive is replaced only with `overwrite`; a folder that is not one, never."""
    results_dir, out = Path(results_dir), Path(out) if out is not None else default_archive_dir(results_dir)
    results = load_results(results_dir)
    if results.archived:
        raise RiclError(f"{results_dir} is an archive already; archive the results directory it was made from")
    if out.exists():
        if not overwrite:
            raise RiclError(f"{out} exists; pass --overwrite to replace the archive there")
        read_archive_json(out)  # refuses a folder that is not an archive of this project
    commit = declaring_commit(declared_in)
    with atomic_directory(out, marker=ARCHIVE_JSON) as tmp:
        info = write_archive_files(results, tmp) | {"declared_in": [str(p) for p in declared_in], "commit": commit}
        (tmp / ARCHIVE_JSON).write_text(json.dumps(info, indent=1) + "\n")
        info["quantisation"] = quantisation_check(results, load_results(tmp))
        (tmp / ARCHIVE_JSON).write_text(json.dumps(info, indent=1) + "\n")
    log.info("archived %s in %s", results_dir, out)
    return out


def write_archive_files(results: Results, tmp: Path) -> dict:
    """Every file of the archive but archive.json, into `tmp`; returns archive.json's content so far."""
    for name in COPIED:
        if (results.directory / name).exists():
            shutil.copyfile(results.directory / name, tmp / name)
    runs = write_records(tmp / ARCHIVED_RECORDS, results.records)
    captured = [run for run in runs if results.has_attention(run)]
    if captured:
        (tmp / ATTENTION).mkdir()
    for run in captured:
        records = results.runs([run])[run]
        arrays = load_attention(results.attention_path(run), records)
        (tmp / ATTENTION / f"{run}{ATTENTION_SUFFIX}").write_bytes(encode_attention(arrays, records))
    return {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "source": results.directory.name, "runs": runs,
            "config_fingerprint": run_fingerprint(results), "attention": {
                "runs": captured, "kept": list(ARCHIVED_COLUMNS), "code": f"uint8 log code, {STEPS_PER_OCTAVE} steps "
                f"per halving, each weight within {MAX_RELATIVE_ERROR:.1%}"}}


def run_fingerprint(results: Results) -> str:
    """The fingerprint run_info.json records; for a directory written before it was recorded, that of its
    config.yaml (whose splits are resolved, so it matches a config that names them)."""
    from .experiment.compare_config import CompareConfig

    path = results.directory / RUN_INFO
    info = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if info.get("config_fingerprint"):
        return info["config_fingerprint"]
    try:
        return CompareConfig(**results.config).fingerprint()
    except (TypeError, ValueError) as e:
        raise RiclError(f"{results.directory / CONFIG}: not a config `ricl compare` can run ({e}); an archive "
                        "needs the run's config") from None


def quantisation_check(original: Results, archived: Results) -> dict:
    """Per run with attention: the best head and its held-out agreement from the results directory's arrays and
    from the archive's codes (the analyses' default split), and whether the codes changed them."""
    from .analysis.attention import reconstruct_run

    out = {}
    for run in [r for r in original.main_runs() if original.has_attention(r)]:
        full, coded = reconstruct_run(original, run), reconstruct_run(archived, run)
        out[run] = {"best_head": "L{}H{}".format(*full.best_head_), "same_best_head": full.best_head_ ==
                    coded.best_head_, "agreement_diff": coded.heldout_["agreement"]["value"] -
                    full.heldout_["agreement"]["value"]}
    return out


def declaring_commit(paths: Sequence[Path]) -> str | None:
    """The last git commit that changed any of the paths (where the configs were declared as they are), once every
    path is committed unchanged; None outside a git checkout. A path with changes not committed is an error: the
    config is committed before the results that come from it."""
    if not paths:
        return None
    paths = [Path(p).resolve() for p in paths]
    top = git(["rev-parse", "--show-toplevel"], paths[0].parent)
    if top is None:
        return None
    changed = git(["status", "--porcelain", "--", *map(str, paths)], Path(top))
    if changed:
        raise RiclError(f"commit the configs before archiving what they ran (the question is declared before the "
                        f"answer): git status shows {changed.splitlines()}")
    return git(["log", "-1", "--format=%H", "--", *map(str, paths)], Path(top)) or None


def git(args: list[str], cwd: Path) -> str | None:
    """A git command's output, stripped; None where git or the checkout is missing."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def check_resumable(archive_dir: Path, config) -> None:
    """Refuse to take an archive as a run of `config` (a CompareConfig) unless their fingerprints agree; the error
    names the fields that differ."""
    from .experiment.compare_config import CompareConfig

    info = read_archive_json(archive_dir)
    if info.get("config_fingerprint") == config.fingerprint():
        return
    archived = CompareConfig(**read_config(archive_dir / CONFIG)).fingerprinted()
    mine = config.fingerprinted()
    # config.yaml names the splits the task resolved; a config that leaves them to the task does not differ there
    differ = [k for k in sorted(set(archived) | set(mine))
              if archived.get(k) != mine.get(k) and not (k in ("pool_split", "query_split") and mine.get(k) is None)]
    shown = "; ".join(f"{k}: archived {archived.get(k)!r}, now {mine.get(k)!r}" for k in differ[:4]) or (
        "the fields agree once the task resolves the splits; the archive predates a change in the config's defaults")
    raise RiclError(f"{archive_dir} was archived from another config (fingerprint {info.get('config_fingerprint')}, "
                    f"this config's is {config.fingerprint()}): {shown}. Rerun it under a new archive name, or move "
                    "the old archive away to rerun it here")

