"""Learn-then-Test: the chosen policy's risk exceeds the tolerance in at most alpha of seeded trials, where the
naive rule (the cheapest candidate whose calibration mean is within the tolerance) does not; and the adaptive fit
keeps its tolerance on the constructed case where the per-level fit lost 11 points."""

import numpy as np
import pytest

from retrieval_icl.errors import RiclError
from retrieval_icl.risk_control import betting_p_value, choose
from retrieval_icl.selectors.adaptive import candidate_chains, fit_outcome, fit_thresholds, never, paired_losses

TOLERANCE, ALPHA, TRIALS = 0.03, 0.1, 1000
# A known loss curve: candidate j changes the answers of DISCORDANT[j] of the queries (losses + gains) with a net
# accuracy drop RISK[j]; cost falls as candidates grow permissive. Several sit at or just below the tolerance.
RISK = np.array([0.0, 0.01, 0.02, 0.025, 0.03, 0.035, 0.05, 0.08])
DISCORDANT = np.array([0.02, 0.06, 0.08, 0.09, 0.10, 0.11, 0.14, 0.18])
COST = np.linspace(8, 1, len(RISK))


def draw_losses(rng: np.random.Generator, n: int) -> np.ndarray:
    """(candidates, n) paired losses: +1 with probability (d + r) / 2, -1 with (d - r) / 2, else 0."""
    u = rng.random((len(RISK), n))
    lose, gain = ((DISCORDANT + RISK) / 2)[:, None], ((DISCORDANT - RISK) / 2)[:, None]
    return np.where(u < lose, 1.0, np.where(u < lose + gain, -1.0, 0.0))


def simulation_error(p: float) -> float:
    return 3 * np.sqrt(p * (1 - p) / TRIALS)


def test_the_chosen_candidates_risk_exceeds_the_tolerance_in_at_most_alpha_of_trials():
    rng = np.random.default_rng(0)
    over = naive_over = chosen_any = 0
    for _ in range(TRIALS):
        losses = draw_losses(rng, 500)
        choice = choose([losses], [COST], TOLERANCE, ALPHA)
        chosen_any += choice is not None
        over += choice is not None and RISK[choice.index] > TOLERANCE - 1e-12  # H0 is risk >= tolerance
        within = np.flatnonzero(losses.mean(axis=1) <= TOLERANCE)
        naive_over += RISK[within.max()] >= TOLERANCE - 1e-12
    assert over / TRIALS <= ALPHA + simulation_error(ALPHA)
    assert naive_over / TRIALS > 0.3  # the rule without a test breaks its promise most of the time
    assert chosen_any / TRIALS > 0.9  # and the test still finds a saving: it is not vacuous


def test_several_chains_share_alpha_and_the_cheapest_shown_candidate_wins():
    rng = np.random.default_rng(1)
    safe = draw_losses(rng, 2000)[:4]  # risks 0 .. 0.025
    costly, cheap = safe[[0, 1]], safe[[0, 1, 2]]
    choice = choose([costly, cheap], [[7.0, 6.0], [7.5, 6.5, 3.0]], TOLERANCE, ALPHA)
    assert (choice.chain, choice.index, choice.cost) == (1, 2, 3.0)
    assert choice.p_value <= ALPHA / 2 and choice.risk == pytest.approx(cheap[2].mean())


def test_a_chain_stops_at_its_first_candidate_not_shown():
    rng = np.random.default_rng(2)
    losses = draw_losses(rng, 2000)
    failing_first = np.vstack([np.ones(2000), losses[0]])  # risk 1, then risk 0: the 0 is never reached
    assert choose([failing_first], [[1.0, 0.5]], TOLERANCE, ALPHA) is None


def test_the_betting_p_value_is_small_for_no_loss_and_one_at_the_tolerance():
    assert betting_p_value(np.zeros(500), TOLERANCE, ALPHA) < 1e-3
    assert betting_p_value(np.zeros(30), TOLERANCE, ALPHA) > ALPHA  # 30 queries cannot show a 3-point bound
    assert betting_p_value(np.full(500, TOLERANCE), TOLERANCE, ALPHA) == 1.0
    with pytest.raises(RiclError, match=r"alpha must be in \(0, 1\)"):
        choose([np.zeros((1, 5))], [[1.0]], TOLERANCE, 1.0)


def constructed_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """100 queries, most confident first, gold 0, k = 4. k is wrong on ranks 0-9. One neighbour is right there and
    wrong on 10-21; two are right on 0-19 and wrong on 20-31. Each level alone loses nothing net near the top, but
    the policy gives ranks 0-20 to one neighbour and 21-30 to two, whose gains sat in the band of the other."""
    confidence = np.linspace(1.0, 0.5, 100)
    gold = np.zeros(100, dtype=np.int64)
    answers = np.zeros((100, 4), dtype=np.int64)
    answers[:10, 3] = 1
    answers[10:22, 0] = 1
    answers[20:32, 1] = 1
    answers[:, 2] = answers[:, 3]
    return confidence, answers, gold


def test_the_per_level_fit_lost_11_points_in_sample_and_learn_then_test_keeps_the_tolerance():
    confidence, answers, gold = constructed_case()
    old = fit_thresholds(confidence, answers, gold, 4, tolerance=0.02)
    outcome = fit_outcome(confidence, answers, gold, 4, old)
    assert outcome["accuracy_k"] - outcome["accuracy_adaptive"] == pytest.approx(0.11)
    # Ten copies of the case (ties broken apart), so the test has the queries to show a saving; fitted in-sample.
    confidence = (np.tile(confidence, 10) - np.repeat(np.arange(10) * 1e-6, 100))
    answers, gold = np.tile(answers, (10, 1)), np.tile(gold, 10)
    chains = candidate_chains(confidence, answers, gold, 4)
    losses = [np.stack([paired_losses(confidence, answers, gold, 4, c) for c in chain]) for chain in chains]
    costs = [[fit_outcome(confidence, answers, gold, 4, c)["mean_count"] for c in chain] for chain in chains]
    # A candidate with no net loss in sample exists, but it changes 20% of the answers (gains offsetting losses):
    # 1,000 queries cannot show its drop below 2 points.
    assert min(chain.mean(axis=1).min() for chain in losses) == 0.0
    assert choose(losses, costs, 0.02, ALPHA) is None
    kept = fit_outcome(confidence, answers, gold, 4, never(4))  # so the fit keeps all k
    assert kept["accuracy_k"] - kept["accuracy_adaptive"] == 0.0 and kept["mean_count"] == 4
    # The same candidates where the changed answers are all gains: shown, and the cheapest is taken.
    gains = [np.minimum(chain, 0.0) for chain in losses]
    choice = choose(gains, costs, 0.02, ALPHA)
    assert choice is not None and choice.cost == min(min(c) for c in costs) and choice.risk < 0
