"""What the repository keeps in benchmarks/results (issue 32): under 80 MB in git; each study's archives made from
the configs as they are now (a config edited after its run would leave an archive that answers another question);
and bfloat16 only where the dtype gate passed for that model and task."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from retrieval_icl.archive_format import ARCHIVE_JSON, read_archive_json
from retrieval_icl.study import load_study, study_configs

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "benchmarks" / "results"
GATES = KEPT / "dtype_gate"
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
MAX_BYTES = 80 * 1024 * 1024


def archived_studies() -> list[Path]:
    return [p for p in STUDIES if load_study(p).archive is not None]


def test_what_git_keeps_in_benchmarks_results_stays_under_80_mb():
    listed = subprocess.run(["git", "ls-files", "-z", "benchmarks/results"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    paths = [ROOT / p for p in listed.stdout.decode().split("\0") if p]
    total = sum(p.stat().st_size for p in paths if p.is_file())
    assert total < MAX_BYTES, f"benchmarks/results holds {total / 2**20:.1f} MB in git; the limit is 80 MB"


@pytest.mark.parametrize("study", archived_studies(), ids=lambda p: p.stem)
def test_every_archive_was_made_from_its_study_config_as_it_is_now(study):
    kept = Path(load_study(study).archive)
    kept = kept if kept.is_absolute() else ROOT / kept
    for config in study_configs(study):
        archive = kept / Path(config.output_dir).name
        if (archive / ARCHIVE_JSON).exists():
            assert read_archive_json(archive)["config_fingerprint"] == config.fingerprint(), archive


@pytest.mark.parametrize("study", archived_studies(), ids=lambda p: p.stem)
def test_a_study_runs_bfloat16_only_where_the_gate_passed_for_its_model_and_task(study):
    for config in study_configs(study):
        if config.dtype == "bfloat16":
            gate = GATES / f"{config.model}-{config.task}.json"
            assert gate.is_file(), f"{config.output_dir} runs bfloat16 with no gate at {gate}"
            found = json.loads(gate.read_text())
            assert found["passes"] and found["model"] == config.model and found["task"] == config.task, gate
        else:
            assert config.dtype == "float32", f"{config.output_dir}: dtype {config.dtype}; a study states its dtype"
