"""attention.py: the Figure 2 attention map and the per-head reconstruction of the ICL prediction (no model)."""

from __future__ import annotations

import numpy as np
import pytest
from handmade_results import BEST, H, L, doctest_failures, profile, summary

from retrieval_icl.analysis import attention
from retrieval_icl.analysis.attention import (
    AttentionMap,
    HeadReconstruction,
    analyze_reconstruction,
    reconstruct_run,
    selection_split,
    span_max_weights,
)
from retrieval_icl.analysis.votes import argmax_breaking_ties, class_votes
from retrieval_icl.errors import RiclError
from retrieval_icl.lm.attention_summary import PRE_LABEL, X_MASS, X_MAX, Y_MAX
from retrieval_icl.results_dir import load_results


def test_attention_all_on_one_label_reconstructs_that_label():
    labels = [0, 1, 1, 0]
    s = np.zeros((L, H, 4, 5))
    s[..., [1, 2], Y_MAX] = 0.4  # every head: all mass on the label-1 demonstrations
    votes = class_votes([span_max_weights(s)], [labels], 2)
    assert (votes.argmax(-1) == 1).all()


def test_span_max_covers_x_y_and_the_output_token():
    s = np.zeros((1, 1, 3, 5))
    s[0, 0, 0, X_MAX], s[0, 0, 1, Y_MAX], s[0, 0, 2, PRE_LABEL] = 0.1, 0.2, 0.3
    s[0, 0, :, X_MASS] = 5  # masses are not maxima: ignored
    assert span_max_weights(s)[0, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_reconstruction_finds_the_planted_head_and_reports_it_held_out(perfect):
    rec = reconstruct_run(load_results(perfect), "knn-seed0", selection_fraction=0.7)
    assert rec.best_head_ == BEST and rec.agreement_[BEST] == 1.0 and rec.accuracy_[BEST] == 1.0
    assert rec.selection_.sum() == 28 and rec.heldout_["n"] == 12
    assert rec.heldout_["agreement"]["value"] == 1.0 and rec.heldout_["icl_accuracy"]["value"] == 1.0
    assert rec.top_heads(3)[0] | {} == {"layer": 1, "head": 2, "selection_agreement": 1.0, "heldout_agreement": 1.0,
                                        "heldout_accuracy": 1.0, "ties": 0}
    row = analyze_reconstruction(load_results(perfect))["runs"]["knn-seed0"]
    assert row["best_head_preamble_mass"] == pytest.approx(0.2, abs=1e-3)  # head 2 of the planted (1, 2)
    assert row["preamble_mass"] == pytest.approx(0.15, abs=1e-3)
    assert row["heads_following_demo_1"] == 0  # demo 1 holds the gold label on half of the queries only


def test_heads_following_a_position_are_counted():
    reconstructed = np.zeros((10, 2, 3), dtype=int)
    labels = [1, 0, 1, 1, 0, 1, 1, 0, 1, 0]
    reconstructed[:, 0, 0] = labels  # head (0, 0) follows them on every query
    reconstructed[:, 1, 2] = labels[:9] + [1]  # head (1, 2) on 9 of 10; the other heads (all 0) on 4 of 10
    assert attention.heads_following(reconstructed, labels) == 2
    assert attention.heads_following(reconstructed, labels, share=0.95) == 1


def test_best_head_is_chosen_on_the_selection_split_only():
    ids = ["a", "b", "c", "d", "e", "f"]
    chosen = selection_split(ids, n=3, seed=0)
    votes = np.zeros((6, 1, 2, 2))
    votes[chosen, 0, 0, 1] = 1  # head 0 matches the prediction (1) on the selection queries only
    votes[~chosen, 0, 0, 0] = 1
    votes[~chosen, 0, 1, 1] = 1  # head 1 on the held-out queries only
    votes[chosen, 0, 1, 0] = 1
    rec = HeadReconstruction(selection_n=3, seed=0).fit(votes, [1] * 6, [1] * 6, ids)
    assert rec.best_head_ == (0, 0) and rec.heldout_["agreement"]["value"] == 0.0
    assert rec.agreement_.tolist() == [[0.5, 0.5]] and rec.heldout_agreement_.tolist() == [[0.0, 1.0]]
    assert rec.ties_.tolist() == [[0, 0]]


def test_tied_and_all_zero_votes_are_counted_and_favour_no_label():
    votes = np.zeros((400, 1, 2, 3))
    votes[:, 0, 1, :2] = 0.5  # head 1: labels 0 and 1 tie, label 2 has nothing
    rec = HeadReconstruction(selection_n=200).fit(votes, [2] * 400, [2] * 400)
    assert rec.ties_.tolist() == [[400, 400]]
    zero, tied = rec.reconstructed_[:, 0, 0], rec.reconstructed_[:, 0, 1]
    assert np.bincount(zero, minlength=3).min() > 100  # all-zero votes: each of 3 labels about a third
    assert set(tied.tolist()) == {0, 1} and abs(float(np.mean(tied)) - 0.5) < 0.1
    predictions, ties = argmax_breaking_ties(np.array([[0.2, 0.2 + 1e-15, 0.1], [0.3, 0.1, 0.2]]))
    assert ties.tolist() == [True, False] and predictions[1] == 0 and predictions[0] in (0, 1)


def test_selection_split_depends_on_query_ids_not_their_order():
    ids = list(range(30))
    a = dict(zip(ids, selection_split(ids, 0.5, seed=3)))
    shuffled = ids[::-1]
    b = dict(zip(shuffled, selection_split(shuffled, 0.5, seed=3)))
    assert a == b and sum(a.values()) == 15
    with pytest.raises(RiclError, match="selection split needs 1..29"):
        selection_split(ids, 1.0)


def test_attention_map_averages_the_most_common_demo_count_and_splits_the_mass():
    profiles = [profile(4), profile(4), profile(2)]
    rng = np.random.default_rng(0)
    summaries = [summary([0, 1, 0, 1], 1, rng), summary([0, 1, 0, 1], 0, rng), summary([0, 1], 1, rng)]
    preambles = [np.full((L, H), 0.4), np.full((L, H), 0.2), np.zeros((L, H))]
    am = AttentionMap().fit(profiles, summaries, preambles)
    assert am.n_demos_ == 4 and am.n_queries_ == 2 and am.map_.shape == (L, 4, 24)
    assert am.region_density_[:, 2] == pytest.approx(0.02) and am.region_density_[:, 0] == pytest.approx(0.002)
    assert am.mass_.shape == (L, 5) and am.mass_.sum(-1) == pytest.approx(1.0)
    assert am.mass_[:, 0] == pytest.approx(0.3)  # the preamble's own mass, averaged over the two 4-demo queries
    x_mass = np.mean([s.mean(1)[..., 0].sum(-1) for s in summaries[:2]], axis=0)
    assert am.mass_[:, 1] == pytest.approx(x_mass)  # demo inputs keep all their mass: the sink is not inside them


def test_doctests():
    assert doctest_failures(attention) == 0
