"""records.py: loading a results directory, and the loader's errors (hand-made records, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from handmade_results import WORDS, H, L, doctest_failures
from safetensors.numpy import save_file

from retrieval_icl.analysis import load_results, records
from retrieval_icl.errors import RiclError


def test_loader_reads_records_config_and_attention(perfect):
    results = load_results(perfect)
    assert len(results.records) == 40 and list(results.runs()) == ["knn-seed0"] and results.n_labels == 2
    assert results.label_names() == ["negative", "positive"] and results.label_words("swapped") == WORDS["swapped"]
    assert (results.summaries("knn-seed0")[0].shape == (L, H, 4, 5) and
            results.profiles("knn-seed0")[0].shape == (L, 4, 24))


@pytest.mark.parametrize("line, message", [
    ("{not json", r"records.jsonl:2: not valid JSON"),
    ('{"run": "x"}', r"records.jsonl:2: missing keys"),
])
def test_loader_names_file_and_line_of_a_bad_record(perfect, line, message):
    path = perfect / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], line, *lines[2:]]) + "\n")
    with pytest.raises(RiclError, match=message):
        load_results(perfect)


def test_loader_rejects_misaligned_demos_and_out_of_range_labels(perfect):
    path = perfect / "records.jsonl"
    rec = json.loads(path.read_text().splitlines()[0])
    for bad, message in [({"demo_scores": [0.1]}, "expected equal lengths"), ({"gold": 5}, r"label ids in 0\.\.1")]:
        path.write_text(json.dumps(rec | bad) + "\n")
        with pytest.raises(RiclError, match=message):
            load_results(perfect)


def test_missing_directory_and_missing_attention_are_clear_errors(perfect, tmp_path):
    with pytest.raises(RiclError, match="no such results directory"):
        load_results(tmp_path / "nowhere")
    (perfect / "attention" / "knn-seed0.safetensors").unlink()
    results = load_results(perfect)
    with pytest.raises(RiclError, match="no attention captured"):
        results.runs_with_attention()
    with pytest.raises(RiclError, match="no attention captured for run 'knn-seed0'"):
        results.summaries("knn-seed0")
    with pytest.raises(RiclError, match="no run named 'nope'"):
        results.runs(["nope"])


def test_attention_with_the_wrong_shape_names_the_file_and_entry(perfect):
    save_file({"0": np.zeros((L, H, 3, 5), np.float16)}, str(perfect / "attention" / "knn-seed0.safetensors"))
    with pytest.raises(RiclError, match=r"knn-seed0.safetensors: entry 0 has shape \(3, 4, 3, 5\), expected"):
        load_results(perfect).summaries("knn-seed0")


def test_doctests():
    assert doctest_failures(records) == 0
