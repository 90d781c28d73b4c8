"""label_format.py: the same selections under several label formats (hand-made records, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from handmade_results import SELECTORS, WORDS, doctest_failures, make_record, queries, run_record, write_dir

from retrieval_icl.analysis import label_format
from retrieval_icl.analysis.label_format import analyze_label_format, compare_formats
from retrieval_icl.errors import RiclError
from retrieval_icl.results_dir import load_results


def test_swapped_labels_invert_a_perfect_predictor(tmp_path):
    recs = []
    for q, g, labels, scores in queries(20):
        recs.append(make_record("knn-default-seed0", q, g, g, labels, scores))
        recs.append(make_record("knn-swapped-seed0", q, g, 1 - g, labels, scores, label_format="swapped"))
    results = load_results(write_dir(tmp_path / "swap", recs, {"task": "sst2", "selectors": SELECTORS[:1]}))
    rows = {r["label_format"]: r for r in analyze_label_format(results, selection_n=10)["rows"]}
    assert rows["default"]["accuracy"] == 1.0 and rows["swapped"]["accuracy"] == 0.0
    assert rows["swapped"]["same_prediction_as_default"] == 0.0 and rows["swapped"]["same_word_as_default"] == 1.0
    assert rows["swapped"]["mcnemar_p"] < 1e-4 and rows["swapped"]["same_demos"] == 1.0
    assert rows["swapped"]["reconstruction_agreement"] == 1.0  # the planted head follows the prediction
    assert rows["swapped"]["label_attention"] < rows["default"]["label_attention"]


def test_label_format_needs_several_formats(perfect):
    with pytest.raises(RiclError, match="no label-format variation"):
        analyze_label_format(load_results(perfect))


def test_compare_formats_leaves_same_word_undefined_without_shared_words():
    ref = [run_record([1], [0.5], gold=1, prediction=1)]
    out = compare_formats(ref, ref, WORDS["default"], WORDS["symbols"])
    assert np.isnan(out["same_word_as_reference"]) and out["agreement_with_reference"] == 1.0


def test_doctests():
    assert doctest_failures(label_format) == 0
