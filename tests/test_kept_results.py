"""What the repository keeps in benchmarks/results (issue 32): under 80 MB in git; each study's archives made from
the configs as they are now (a config edited after its run would leave an archive that answers another question);
and bfloat16 only where the dtype gate passed for that model and task."""

from __future__ import annotations

import json
import shutil
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


def test_the_studies_rebuild_their_findings_from_the_archives_alone_to_the_same_bytes(tmp_path, monkeypatch):
    """Issue 32's acceptance, as on a fresh clone: `ricl study` on each archived study scores nothing (a scorer that
    fails if asked) and writes the same claims, figures and findings.md as git holds."""
    from standin import tiny_tokenizer
    from test_study_archive import NoScoring

    from retrieval_icl.study import run_study

    studies = [p for p in archived_studies() if load_study(p).question is not None
               and (ROOT / load_study(p).archive / "study.json").is_file()]
    if not studies:
        pytest.skip("no study findings archived yet")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(KEPT, tmp_path / "benchmarks" / "results")
    monkeypatch.chdir(tmp_path)  # the studies' archive folders are relative to the working directory
    for study in studies:
        run_study(Path("configs") / "studies" / study.name, scorer=NoScoring(tiny_tokenizer()))
    rebuilt = tmp_path / "benchmarks" / "results"
    names = ["findings.md", "findings.csv"] + [f"{load_study(p).archive.split('/')[-1]}/{f}" for p in studies
                                               for f in ("claims.md", "claims.csv", "conditions.csv", "study.json")]
    names += [str(p.relative_to(KEPT)) for p in KEPT.glob("*/*.png")]
    changed = [n for n in names if (rebuilt / n).read_bytes() != (KEPT / n).read_bytes()]
    assert changed == [], f"rebuilt from the archives, these differ from git's: {changed}"
    assert not (tmp_path / "results").exists()  # nothing ran
