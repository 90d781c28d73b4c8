"""A Hugging Face dataset without a task YAML (`ricl index build --hf-dataset`): folders written by save_to_disk,
read offline, the label names from the label column's ClassLabel, every problem one error naming dataset, split and
row; and the hub path failing as one line when the hub is unreachable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from retrieval_icl.cli import app
from retrieval_icl.data.tasks import hf_dataset_examples, load_examples, load_task
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"  # 40 train and 8 validation hand-made SST-2 lines
SST2 = load_task("sst2")


def rows_of(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / "sst2" / f"{split}.jsonl").read_text().splitlines()]


def sst2_dataset(split: str, **overrides: list) -> datasets.Dataset:
    """The tiny SST-2 split as the hub's copy is typed: sentence, a ClassLabel label, idx; `overrides` replace columns
    (a plain integer label column loses the ClassLabel)."""
    rows = rows_of(split)
    columns = {"sentence": [r["sentence"] for r in rows], "label": [r["label"] for r in rows],
               "idx": [r["idx"] for r in rows]} | overrides
    features = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    if "label" in overrides:
        features["label"] = datasets.Value("int64") if all(isinstance(v, int) for v in overrides["label"]) \
            else datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=features)


def save(folder: Path, data: datasets.Dataset | datasets.DatasetDict) -> Path:
    data.save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def saved_dict(tmp_path_factory) -> Path:
    """A DatasetDict with the tiny train and validation splits, saved as `DatasetDict.save_to_disk` writes it."""
    return save(tmp_path_factory.mktemp("hf") / "reviews",
                datasets.DatasetDict({"train": sst2_dataset("train"), "validation": sst2_dataset("validation")}))


def test_a_saved_dataset_gives_the_task_splits_examples_and_its_classlabel_names(tmp_path, saved_dict):
    alone = save(tmp_path / "sst2-train", sst2_dataset("train"))  # Dataset.save_to_disk: no splits in it
    task, examples = hf_dataset_examples(alone, "train", ["sentence"])
    assert examples == load_examples(SST2, "train", DATA)
    assert (task.name, task.text_fields, task.label_field, task.label_names) == \
        ("sst2-train", ["sentence"], "label", ["negative", "positive"])
    task, examples = hf_dataset_examples(str(saved_dict), "validation", ["sentence"])
    assert examples == load_examples(SST2, "validation", DATA) and task.name == "reviews"
    task, _ = hf_dataset_examples(saved_dict, "train", ["sentence"], label_names=["bad", "good"])
    assert task.label_names == ["bad", "good"]  # given names win over the ClassLabel's


def test_labels_without_a_classlabel_are_given_as_ids_or_names(tmp_path):
    names = ["positive" if r["label"] else "negative" for r in rows_of("train")]
    for labels in ([r["label"] for r in rows_of("train")], names):
        folder = save(tmp_path / f"plain-{type(labels[-1]).__name__}", sst2_dataset("train", label=labels))
        with pytest.raises(RiclError, match=r"split train: column 'label' holds (int64|string), not a ClassLabel "
                                            r"with names; give the label names in id order \(--labels neg,pos\)"):
            hf_dataset_examples(folder, "train", ["sentence"])
        _, examples = hf_dataset_examples(folder, "train", ["sentence"], label_names=["negative", "positive"])
        assert examples == load_examples(SST2, "train", DATA)


@pytest.mark.parametrize("overrides, fields, pattern", [
    ({}, ["text"], r"dataset .*bad split train: no column 'text'; columns are \['idx', 'label', 'sentence'\]$"),
    ({}, ["sentence", "sentence2"], r"split train: no column 'sentence2'"),
    ({"sentence": ["fine"] * 39 + [None]}, ["sentence"], r"split train row 39: sentence=None is not a string"),
    ({"sentence": ["fine"] * 7 + ["  "] + ["ok"] * 32}, ["sentence"], r"split train row 7: sentence is empty"),
    ({"label": [0] * 12 + [-1] * 28}, ["sentence"], r"split train row 12: label=-1 is outside the label set 0\.\.1"),
])
def test_a_bad_column_or_row_names_dataset_split_and_row(tmp_path, overrides, fields, pattern):
    folder = save(tmp_path / "bad", sst2_dataset("train", **overrides))
    with pytest.raises(RiclError, match=pattern):
        hf_dataset_examples(folder, "train", fields, label_names=["negative", "positive"])


def test_splits_configs_and_folders_that_are_not_datasets(tmp_path, saved_dict):
    with pytest.raises(RiclError, match=r"split test: no such split; the splits are \['train', 'validation'\]"):
        hf_dataset_examples(saved_dict, "test", ["sentence"])
    one = save(tmp_path / "one", datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]}, split="train"))
    with pytest.raises(RiclError, match=r"split validation: no such split; the folder holds split 'train' only"):
        hf_dataset_examples(one, "validation", ["sentence"], label_names=["a", "b"])
    with pytest.raises(RiclError, match=r"reviews: a saved dataset has no configs; give --hf-config only with a hub"):
        hf_dataset_examples(saved_dict, "train", ["sentence"], config="sst2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RiclError, match=r"empty: not a dataset folder \(.*\); expected one written by save_to_disk"):
        hf_dataset_examples(tmp_path / "empty", "train", ["sentence"])
    with pytest.raises(RiclError, match=r"train\.jsonl: a file, not a dataset folder; read a file of examples with"):
        hf_dataset_examples(DATA / "sst2" / "train.jsonl", "train", ["sentence"])
    no_rows = sst2_dataset("train").select([])
    no_rows.save_to_disk(str(tmp_path / "no-rows"), num_shards=1)
    with pytest.raises(RiclError, match=r"split train: no examples; expected at least one row"):
        hf_dataset_examples(tmp_path / "no-rows", "train", ["sentence"])
    save(tmp_path / "no-shards", datasets.DatasetDict({"train": sst2_dataset("train"), "test": no_rows}))
    with pytest.raises(RiclError, match=r"no-shards: datasets cannot load it back: a split saved with no rows\?"):
        hf_dataset_examples(tmp_path / "no-shards", "train", ["sentence"])


# --- Through the CLI ----------------------------------------------------------------------------------------------

def ricl_process(*args: object, **env: str) -> subprocess.CompletedProcess:
    """`python3 -m retrieval_icl ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "retrieval_icl", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=os.environ | env, timeout=600)


def test_index_build_from_a_saved_datasetdict_by_name(saved_dict, tmp_path):
    out = tmp_path / "index"
    done = ricl_process("index", "build", "--hf-dataset", saved_dict, "--split", "train", "--text-field", "sentence",
                        "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"saved 40 examples (flat, dim 384) to {out}" in " ".join(done.stdout.split())  # rich wraps at 80
    index = DemoIndex.load(out)
    manifest = index.manifest
    assert (manifest.task, manifest.label_names, manifest.text_fields) == ("reviews", ["negative", "positive"],
                                                                           ["sentence"])
    assert sorted(index.examples, key=lambda e: e.id) == load_examples(SST2, "train", DATA)
    chosen = CliRunner().invoke(app, ["select", "--index", str(out), "-k", "2", "a warm and funny film"])
    assert chosen.exit_code == 0 and "positive" in chosen.output, chosen.output


def test_a_hub_id_that_cannot_be_reached_is_one_error_line(tmp_path):
    done = ricl_process("index", "build", "--hf-dataset", "no-such-user/no-such-dataset", "--text-field", "text",
                        "--out", tmp_path / "i", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert re.match(r"error: hub dataset 'no-such-user/no-such-dataset', split 'train': cannot load \(.+\); "
                    r"expected a hub id", lines[0]), lines[0]
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("extra, pattern", [
    (["--file", DATA / "sst2" / "train.jsonl"], r"--hf-dataset names the data and its columns: give it without "
                                                r"--task, --file and --data-dir$"),
    (["--task", "sst2"], r"give it without --task, --file and --data-dir"),
    (["--data-dir", DATA], r"give it without --task, --file and --data-dir"),
    (["--split", "test"], r"split test: no such split; the splits are \['train', 'validation'\]"),
    (["--label-field", "idx"], r"column 'idx' holds int32, not a ClassLabel with names; give the label names"),
    (["--text-field", "text"], r"split train: no column 'text'; columns are \['idx', 'label', 'sentence'\]"),
])
def test_cli_refuses_bad_hf_dataset_options_in_one_line(saved_dict, tmp_path, extra, pattern):
    args = ["index", "build", "--hf-dataset", saved_dict, "--out", tmp_path / "i"]
    args += extra if "--text-field" in extra else ["--text-field", "sentence", *extra]
    result = CliRunner().invoke(app, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]) and "Traceback" not in result.output, lines[0]
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("args, pattern", [
    (["--hf-dataset", "x"], r"--hf-dataset needs --text-field"),
    (["--task", "sst2", "--hf-config", "sst2"], r"--hf-config goes with --hf-dataset"),
])
def test_cli_hf_options_that_need_each_other(tmp_path, args, pattern):
    result = CliRunner().invoke(app, ["index", "build", *args, "--out", str(tmp_path / "i")])
    assert result.exit_code == 2 and re.fullmatch(f"error: .*{pattern}.*", result.stderr.strip()), result.output
