"""kernel.py: kernel regression with the encoder and head kernels, and Table 2 (hand-made records, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from handmade_results import BEST, SELECTORS, H, L, doctest_failures, make_record, queries, write_dir

from retrieval_icl.analysis import kernel
from retrieval_icl.analysis.attention import reconstruct_run
from retrieval_icl.analysis.kernel import KernelRegression, head_kernel_predictions
from retrieval_icl.errors import RiclError
from retrieval_icl.lm.attention_summary import PRE_LABEL
from retrieval_icl.results_dir import load_results
from retrieval_icl.retrieval.kernel_surrogate import KernelSurrogate


def test_kernel_with_bandwidth_to_zero_returns_the_nearest_neighbours_label():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, size=(50, 6))
    labels = rng.integers(0, 3, size=(50, 6))
    nearest = labels[np.arange(50), sims.argmax(1)]
    for bandwidth in (0.0, 1e-6):
        assert np.array_equal(KernelRegression(bandwidth).fit(sims, labels, 3).predictions_, nearest)


def test_kernel_with_a_wide_bandwidth_is_the_majority_vote():
    sims, labels = [[0.9, 0.1, 0.2]], [[1, 0, 0]]
    assert KernelRegression(bandwidth=1e4).fit(sims, labels, 2).predictions_.tolist() == [0]
    assert KernelRegression(bandwidth=0.01).fit(sims, labels, 2).predictions_.tolist() == [1]
    with pytest.raises(RiclError, match="bandwidth must be a number >= 0"):
        KernelRegression(-1).fit(sims, labels, 2)


def test_nearest_neighbour_ties_share_the_vote_and_the_tie_is_broken_at_random():
    kr = KernelRegression(0.0).fit([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1], [], [0.3, 0.3]], [[0, 1, 1], [1, 1, 0], [],
                                                                                       [2, 2]], n_labels=3)
    expected = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1 / 3] * 3, [0.0, 0.0, 1.0]]  # no demonstrations: uniform
    assert kr.class_weights_ == pytest.approx(np.array(expected), abs=1e-15)
    assert kr.ties_.tolist() == [True, False, True, False] and kr.predictions_[0] in (0, 1)


def test_kernel_regression_is_the_surrogates_vote_without_a_prior():
    rng = np.random.default_rng(3)
    sims, labels = rng.uniform(-1, 1, size=(20, 5)), rng.integers(0, 3, size=(20, 5))
    for bandwidth in (0.0, 0.05, 1.0):
        votes = KernelRegression(bandwidth).fit(sims, labels, 3).class_weights_
        assert np.allclose(votes, KernelSurrogate(3, bandwidth).predict_many(sims, labels), rtol=0, atol=1e-15)


def test_head_kernel_reads_the_pre_label_attention_of_the_chosen_head():
    s = np.zeros((L, H, 3, 5))
    s[1, 2, 2, PRE_LABEL] = 0.7  # the head looks at demo 2's "Output:" position
    s[0, 0, 0, PRE_LABEL] = 0.9  # another head looks elsewhere
    assert head_kernel_predictions([s], [[0, 0, 1]], 2, (1, 2)).tolist() == [1]
    assert head_kernel_predictions([s], [[0, 0, 1]], 2, (0, 0)).tolist() == [0]


def test_table2_on_a_perfect_head_and_a_gold_nearest_neighbour(perfect):
    out = kernel.analyze_kernel(load_results(perfect), bandwidth=0.01)
    col = out["runs"]["knn-seed0"]
    for metric in ("icl_accuracy", "reconstruction_agreement", "reconstructed_accuracy", "encoder_kernel_accuracy",
                   "head_kernel_accuracy"):
        assert col[metric]["value"] == 1.0, metric
    text = (perfect / "analysis" / "kernel.json").read_text()
    assert "paper (GPT-J-6B (28 layers x 16 heads), Table 2)" in text and "0.503" in text


def test_encoder_kernel_reads_the_experiments_encoder_not_the_selectors_scores(tmp_path):
    recs = []
    for q, g, labels, scores in queries():
        own = [1.0 - s for s in scores]  # the selector's own kernel ranks the other label's demos nearest
        recs.append(make_record("lm-seed0", q, g, g, labels, own, selector="lm", demo_score_kind="cosine:lm:x",
                                encoder_similarities=scores))
    results = load_results(write_dir(tmp_path / "own", recs, {"task": "sst2", "selectors": SELECTORS[:1]}))
    column, _ = kernel.table2_column(results, ["lm-seed0"], bandwidth=0.01)
    assert column["encoder_kernel_accuracy"]["value"] == 1.0


def test_calibrated_records_are_reconstructed_against_the_raw_prediction(tmp_path):
    recs = []
    for q, g, labels, scores in queries():
        recs.append(make_record("knn-seed0", q, g, 1 - g, labels, scores) | {"raw_prediction": g, "correct": False,
                                                                            "calibrated_log_probs": [-0.5, -1.0]})
    results = load_results(write_dir(tmp_path / "cal", recs, {"task": "sst2", "selectors": SELECTORS[:1]}))
    # write_dir plants head BEST on the demos of each record's `prediction`; here that is the calibrated one
    rec = reconstruct_run(results, "knn-seed0", selection_n=20)
    assert rec.agreement_[BEST] == 0.0 and rec.heldout_["icl_accuracy"]["value"] == 1.0
    column, _ = kernel.table2_column(results, ["knn-seed0"], bandwidth=0.1, selection_n=20, n_null=10)
    assert column["icl_accuracy"]["value"] == 1.0 and column["calibrated_icl_accuracy"]["value"] == 0.0


def test_doctests():
    assert doctest_failures(kernel) == 0


def test_seeds_pooled_count_held_out_queries_not_records(tmp_path):
    recs = [make_record(f"random-seed{s}", q, g, g, labels, scores, selector="random", seed=s)
            for s in (0, 1) for q, g, labels, scores in queries()]
    results = load_results(write_dir(tmp_path / "two", recs, {"task": "sst2", "selectors": [{"name": "random"}]}))
    column, controls = kernel.table2_column(results, ["random-seed0", "random-seed1"], bandwidth=0.1,
                                            selection_n=10, n_splits=3, n_null=5)
    assert column["n"]["value"] == 30  # 40 queries, 10 chosen on: each query's two records count once
    assert controls.selection_.sum(1).tolist() == [20, 20, 20]  # both records of a selection query
