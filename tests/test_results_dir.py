"""results_dir.py: the results directory's one table writer (CSV and Markdown) and its refusals (no model)."""

from __future__ import annotations

import pytest
from handmade_results import doctest_failures

from retrieval_icl import results_dir
from retrieval_icl.errors import RiclError
from retrieval_icl.results_dir import RUN_INFO, check_output_dir, markdown_table, write_csv


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


def test_doctests():
    assert doctest_failures(results_dir) == 0
