"""The `ricl` command on bad input: one line naming the problem, exit code 2, nothing half-written."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval_icl.cli import app

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
runner = CliRunner()


def ricl(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert pytest.importorskip("re").search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    data = folder / "reviews.jsonl"
    rows = [("a gorgeous, witty film", "pos"), ("dull and far too long", "neg"), ("I loved every minute", "pos"),
            ("a tedious mess", "neg"), ("warm and funny", "pos")]
    data.write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in rows))
    out = folder / "index"
    result = ricl("index", "build", "--file", data, "--text-field", "review", "--label-field", "sentiment",
                  "--labels", "neg,pos", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_index_build_info_and_select_work_on_a_users_file(small_index):
    info = ricl("index", "info", small_index)
    assert info.exit_code == 0 and "sentence-transformers/all-MiniLM-L6-v2" in info.output and "384" in info.output
    chosen = ricl("select", "--index", small_index, "-k", "2", "--order", "nearest_first", "a witty and gorgeous movie")
    assert chosen.exit_code == 0, chosen.output
    rows = [line for line in chosen.output.splitlines() if line.startswith("│")]
    assert "gorgeous, witty" in rows[0] and "pos" in rows[0]


def test_existing_index_is_not_overwritten_without_the_flag(small_index):
    before = (small_index / "manifest.json").read_text()
    result = ricl("index", "build", "--task", "sst2", "--data-dir", DATA, "--out", small_index)
    assert_one_line_error(result, "exists; pass --overwrite")
    assert (small_index / "manifest.json").read_text() == before


@pytest.mark.parametrize("row, pattern", [
    ({"text": "fine", "label": 7}, r"bad\.jsonl:2: label=7 is outside the label set"),
    ({"text": "", "label": 0}, r"bad\.jsonl:2: text is empty"),
    ({"body": "fine", "label": 0}, r"bad\.jsonl:2: no column 'text'"),
])
def test_bad_rows_fail_and_write_nothing(tmp_path, row, pattern):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "good", "label": 1}) + "\n" + json.dumps(row) + "\n")
    out = tmp_path / "index"
    result = ricl("index", "build", "--file", data, "--text-field", "text", "--labels", "neg,pos", "--out", out)
    assert_one_line_error(result, pattern)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]


def test_missing_file_and_unknown_task(tmp_path):
    assert_one_line_error(ricl("index", "build", "--file", tmp_path / "nope.csv", "--text-field", "t", "--labels", "a,b",
                               "--out", tmp_path / "i"), "nope.csv: no such file")
    assert_one_line_error(ricl("index", "build", "--task", "sst3", "--out", tmp_path / "i"), "unknown task 'sst3'")
    assert_one_line_error(ricl("compare", tmp_path / "missing.yaml"), "missing.yaml: no such file")


def test_k_larger_than_the_pool(small_index):
    assert_one_line_error(ricl("select", "--index", small_index, "-k", "9", "good"), r"k=9 is larger than the pool \(5")


def test_corrupt_and_missing_index(small_index, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in small_index.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "index.faiss").write_bytes(b"not a faiss index")
    assert_one_line_error(ricl("index", "info", broken), "corrupt")
    assert_one_line_error(ricl("select", "--index", broken, "good"), "corrupt")
    assert_one_line_error(ricl("index", "info", tmp_path / "none"), "none")


def test_bad_experiment_config_names_the_field(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("task: sst2\nk: 0\n")
    assert_one_line_error(ricl("compare", cfg), r"exp\.yaml: k: Input should be greater than 0")
    cfg.write_text("task: sst2\nselectors: [{name: knn, label: a}, {name: random, label: a}]\n")
    assert_one_line_error(ricl("validate", cfg), "selector labels must be unique")
    cfg.write_text("task: sst2\nbatchsize: 3\n")
    assert_one_line_error(ricl("validate", cfg), "batchsize: Extra inputs are not permitted")


def test_validate_accepts_the_shipped_configs():
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in [*root.glob("experiments/*.yaml"), root / "tasks" / "sst2.yaml"]:
        result = ricl("validate", path)
        assert result.exit_code == 0, (path, result.output)
