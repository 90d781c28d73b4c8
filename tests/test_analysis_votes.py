"""votes.py: label votes from attention weights, tie-breaking argmax, rates."""

from __future__ import annotations

import numpy as np
from handmade_results import doctest_failures

from retrieval_icl.analysis import votes
from retrieval_icl.analysis.votes import class_votes


def test_class_votes_sum_weights_per_label_over_any_leading_axes():
    w = np.arange(2 * 3, dtype=float).reshape(2, 3)  # (heads, demos)
    votes = class_votes([w], [[0, 1, 1]], 2)
    assert votes.shape == (1, 2, 2) and votes[0].tolist() == [[0, 3], [3, 9]]


def test_doctests():
    assert doctest_failures(votes) == 0
