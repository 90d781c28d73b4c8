"""The results archive (archive.py, archive_format.py): a compact copy that the analyses read as they read the results
directory, the same bytes for the same results, and no folder replaced that is not an archive of this project."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval_icl.analysis import run_all, write_report
from retrieval_icl.archive import archive_results, declaring_commit
from retrieval_icl.archive_format import (
    ARCHIVE_JSON,
    ARCHIVED_RECORDS,
    MAX_RELATIVE_ERROR,
    decode_weights,
    encode_weights,
)
from retrieval_icl.cli import app
from retrieval_icl.errors import RiclError
from retrieval_icl.lm.attention_summary import Y_MASS
from retrieval_icl.results_dir import load_results


def files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_codes_keep_every_weight_within_the_stated_error_and_zero_at_zero():
    values = np.concatenate([[0.0, 1.0, 6e-8, 2.5e-8], np.geomspace(3e-8, 1.0, 5000)])
    decoded = decode_weights(encode_weights(values))
    assert decoded[0] == 0.0 and decoded[1] == 1.0
    relative = np.abs(decoded[2:] - values[2:]) / values[2:]
    assert relative.max() <= MAX_RELATIVE_ERROR + 1e-6  # 3.5%: half of a tenth of an octave
    assert encode_weights(np.array([1e-9]))[0] == 0  # below the smallest code: 0, as float16 holds it too
    assert encode_weights(np.array([1.7])).tolist() == [255]  # over 1 (no attention weight is) reads as 1


def test_an_archive_reads_back_the_records_and_the_attention_the_analyses_use(study, tmp_path):
    kept = archive_results(study, tmp_path / "archive")
    full, archived = load_results(study), load_results(kept)
    assert archived.archived and not full.archived
    assert [r.model_dump() for r in archived.records] == [r.model_dump() for r in full.records]  # order too
    assert archived.config == full.config and archived.attention_kept == ("y_mass", "preamble_mean")
    run = full.main_runs()[0]
    for original, coded in zip(full.summaries(run), archived.summaries(run)):
        weights = original[..., Y_MASS]
        assert np.all(np.abs(coded[..., Y_MASS] - weights) <= MAX_RELATIVE_ERROR * weights + 1e-12)
        assert np.isnan(np.delete(coded, Y_MASS, axis=-1)).all()  # the columns an archive does not keep
    np.testing.assert_array_equal(archived.preamble_mean(run), full.preamble_mean(run))  # kept exactly, per run
    assert archived.preamble_mean(run).shape == (3, 4)
    with pytest.raises(RiclError, match="an archive keeps none"):
        archived.profiles(run)
    with pytest.raises(RiclError, match="averaged over its queries"):
        archived.preambles(run)
    info = json.loads((kept / ARCHIVE_JSON).read_text())
    assert info["runs"] == list(full.runs()) and info["config_fingerprint"] and info["commit"] is None
    assert all(q["same_best_head"] and q["agreement_diff"] == 0 for q in info["quantisation"].values())


def test_the_analyses_of_an_archive_agree_with_the_results_directorys(study, tmp_path):
    kept = archive_results(study, tmp_path / "archive")
    full, archived = run_all(load_results(study), selection_n=40), run_all(load_results(kept), selection_n=40)
    assert isinstance(full["attention"], dict)
    assert "an archive keeps the label-token weights only" in archived["attention"]
    same = {"distribution": None, "frontier": None, "surrogate": None, "bandwidth": ("conditions", "random_bins")}
    for name, parts in same.items():  # what reads the records alone: the same numbers
        pick = (lambda found: found) if parts is None else (lambda found: {k: found[k] for k in parts})  # noqa: E731
        assert json.dumps(pick(archived[name]), default=str) == json.dumps(pick(full[name]), default=str), name
    for coded, row in zip(archived["bandwidth"]["entropy"], full["bandwidth"]["entropy"]):
        assert coded["head"] == row["head"] and coded["entropy_correct"] == pytest.approx(row["entropy_correct"],
                                                                                          abs=0.01)
    for coded, row in zip(archived["label_format"]["rows"], full["label_format"]["rows"]):
        assert coded["accuracy"] == row["accuracy"] and coded["label_attention"] == row["label_attention"]
        assert coded["reconstruction_agreement"] == pytest.approx(row["reconstruction_agreement"], abs=0.01)
    for run, row in full["reconstruction"]["runs"].items():  # the planted head, found from the codes too
        coded = archived["reconstruction"]["runs"][run]
        assert (coded["best_layer"], coded["best_head"]) == (row["best_layer"], row["best_head"]) == (1, 2)
        assert coded["agreement"] == pytest.approx(row["agreement"], abs=0.01)
        assert "span_max_agreement" in row and "span_max_agreement" not in coded  # the ablation needs full attention
    table = (kept / "analysis" / "kernel.csv").read_text()
    assert "reconstruction_agreement" in table and "head_kernel_accuracy" not in table


def test_deleting_an_archives_analyses_rebuilds_the_same_bytes(study, tmp_path):
    kept = archive_results(study, tmp_path / "archive")
    run_all(load_results(kept), selection_n=40)
    write_report(kept, html=False)
    before = files(kept)
    assert any(name.endswith(".png") for name in before)
    shutil.rmtree(kept / "analysis")
    (kept / "report.md").unlink()
    run_all(load_results(kept), selection_n=40)
    write_report(kept, html=False)
    assert files(kept) == before


def test_the_same_results_make_the_same_archive_bytes(study, tmp_path):
    first = archive_results(study, tmp_path / "a")
    second = archive_results(study, tmp_path / "b")
    assert files(first) == files(second)
    assert gzip.decompress((first / ARCHIVED_RECORDS).read_bytes()).count(b"\n") == len(load_results(study).records)


def test_an_archive_never_replaces_what_is_not_one_of_its_own(study, tmp_path):
    out = archive_results(study, tmp_path / "archive")
    with pytest.raises(RiclError, match="exists; pass --overwrite"):
        archive_results(study, out)
    archive_results(study, out, overwrite=True)
    theirs = tmp_path / "notes"
    theirs.mkdir()
    (theirs / "NOTES.md").write_text("mine")
    with pytest.raises(RiclError, match="not a retrieval-icl archive"):
        archive_results(study, theirs, overwrite=True)
    assert (theirs / "NOTES.md").read_text() == "mine" and len(list(theirs.iterdir())) == 1
    with pytest.raises(RiclError, match="is an archive already"):
        archive_results(out, tmp_path / "again")


def test_a_damaged_archive_is_an_error_naming_the_file(study, tmp_path):
    out = archive_results(study, tmp_path / "archive")
    records = out / ARCHIVED_RECORDS
    records.write_bytes(records.read_bytes()[:200])
    with pytest.raises(RiclError, match=f"{records}: not a readable gzip JSONL file"):
        load_results(out)
    out = archive_results(study, tmp_path / "archive2")
    info = json.loads((out / ARCHIVE_JSON).read_text())
    (out / ARCHIVE_JSON).write_text(json.dumps(info | {"format": "something-else"}))
    with pytest.raises(RiclError, match="format is 'something-else', expected 'retrieval-icl-archive'"):
        load_results(out)
    out = archive_results(study, tmp_path / "archive3")
    results = load_results(out)
    run = results.main_runs()[0]
    other = next(r for r in results.runs() if r != run)
    shutil.copyfile(results.attention_path(other), results.attention_path(run))
    with pytest.raises(RiclError, match=f"holds run '{other}'.*expected the 60 records of run '{run}'"):
        load_results(out).summaries(run)


def test_ricl_archive_from_the_cli(study, tmp_path):
    result = CliRunner().invoke(app, ["archive", str(study), "--out", str(tmp_path / "kept")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "kept" / ARCHIVE_JSON).is_file()
    again = CliRunner().invoke(app, ["archive", str(study), "--out", str(tmp_path / "kept")])
    assert again.exit_code == 2 and "pass --overwrite" in again.output


def test_an_archive_records_the_commit_of_its_configs_and_refuses_uncommitted_ones(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    config = tmp_path / "study.yaml"
    config.write_text("question: first\n")
    with pytest.raises(RiclError, match="commit the configs before archiving"):
        declaring_commit([config])  # not committed yet
    git("add", "study.yaml")
    git("commit", "-q", "-m", "declare")
    declared = git("rev-parse", "HEAD")
    (tmp_path / "later.txt").write_text("a later commit that leaves the config alone")
    git("add", "later.txt")
    git("commit", "-q", "-m", "later")
    assert declaring_commit([config]) == declared != git("rev-parse", "HEAD")
    config.write_text("question: changed after the run\n")
    with pytest.raises(RiclError, match="study.yaml"):
        declaring_commit([config])
    assert declaring_commit([]) is None
