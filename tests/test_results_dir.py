"""results_dir.py: the results directory's one table writer (CSV and Markdown), its refusals, and its reader with
the reader's errors (hand-made records, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from handmade_results import WORDS, H, L, doctest_failures
from safetensors.numpy import save_file

from retrieval_icl import results_dir
from retrieval_icl.errors import RiclError
from retrieval_icl.record import AttentionDigest, RunRecord
from retrieval_icl.results_dir import RUN_INFO, check_output_dir, load_results, markdown_table, write_csv


def test_table_cells_have_three_decimals_and_a_dash_for_missing_values():
    rows = [{"a": 0.12345, "b": None}, {"b": float("nan"), "c": 2}]
    assert markdown_table(rows) == "| a | b | c |\n|---|---|---|\n| 0.123 | – | – |\n| – | – | 2 |\n"
    assert markdown_table([]) == ""


def test_summary_tables_keep_four_significant_digits():
    rows = [{"run": "knn-seed0", "accuracy": 0.8125, "ci_low": 0.625, "mean_similarity": 0.544912, "n": 8}]
    assert markdown_table(rows, ".4g") == ("| run | accuracy | ci_low | mean_similarity | n |\n|---|---|---|---|---|\n"
                                           "| knn-seed0 | 0.8125 | 0.625 | 0.5449 | 8 |\n")


def test_csv_columns_are_the_union_of_keys_and_no_rows_make_an_empty_file(tmp_path):
    write_csv(tmp_path / "t.csv", [{"a": 1.5, "b": "x"}, {"c": True, "a": 2}])
    assert (tmp_path / "t.csv").read_bytes() == b"a,b,c\r\n1.5,x,\r\n2,,True\r\n"
    write_csv(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_bytes() == b""


def test_an_existing_directory_is_refused_unless_overwritten_and_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RiclError, match="exists; pass --overwrite"):
        check_output_dir(out, overwrite=False)
    with pytest.raises(RiclError, match=f"no {RUN_INFO}"):
        check_output_dir(out, overwrite=True)
    (out / RUN_INFO).write_text("{}")
    check_output_dir(out, overwrite=True)
    check_output_dir(tmp_path / "new", overwrite=False)


def test_loader_reads_records_config_and_attention(perfect):
    results = load_results(perfect)
    assert len(results.records) == 40 and list(results.runs()) == ["knn-seed0"] and results.n_labels == 2
    assert results.label_names() == ["negative", "positive"]
    assert results.label_words_from_task_spec("swapped") == WORDS["swapped"]
    assert results.label_words_from_task_spec("no-such-format") is None
    assert (results.summaries("knn-seed0")[0].shape == (L, H, 4, 5) and
            results.profiles("knn-seed0")[0].shape == (L, 4, 24))


def test_records_are_checked_run_records_read_by_attribute(perfect):
    first = load_results(perfect).records[0]
    line = json.loads((perfect / "records.jsonl").read_text().splitlines()[0])
    assert isinstance(first, RunRecord) and first == RunRecord.model_validate(line)
    assert (first.run, first.query_id, first.gold, first.prediction) == ("knn-seed0", 0, 0, 0)
    assert first.preamble_span == (0, 1) and first.x_spans[0] == (1, 7)  # spans read back as tuples
    assert first.attention == AttentionDigest(preamble_mass=0.1, x_mass=[0.02] * 4, y_mass=[0.05] * 4)
    assert first.calibrated_log_probs is None  # absent optional field


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
    assert doctest_failures(results_dir) == 0
