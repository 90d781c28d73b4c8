"""Learn-then-Test (Angelopoulos et al. 2021): choose among candidate policies one whose risk is shown to be at most a
tolerance, so that the chosen policy's risk exceeds the tolerance with probability at most alpha over the
calibration draw.

The risk here is a paired loss in [-1, 1] per calibration query (adaptive: 1 when the full-k answer is right and the
policy's is wrong, -1 the reverse, 0 otherwise; its mean is the accuracy drop). Each candidate's null hypothesis,
"its risk is at least the tolerance", is tested with a betting p-value (Waudby-Smith & Ramdas 2023), which is valid
for any bounded loss and tight when the losses vary little, as they do when a policy changes few answers.

The candidates come in chains, each ordered from safe to permissive before the calibration data is seen. Each chain
is tested in fixed sequence (stop at the first candidate not shown; also where the calibration mean itself exceeds
the tolerance, which only rejects less) at alpha / the number of chains (Bonferroni), so the family-wise error over
all candidates is at most alpha and any candidate shown may be chosen: `choose` takes the cheapest. For exchangeable
queries (calibration and later queries drawn alike): P(risk of the chosen candidate > tolerance) <= alpha. When no
candidate is shown, there is no choice and the caller keeps its safe policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import RiclError

LOSS_RANGE = (-1.0, 1.0)  # the paired loss per query; rescaled to [0, 1] for the betting test
SHUFFLE_SEED = 0
MAX_BET = 0.75  # of the largest bet that keeps the wealth positive: room for a loss right after a gain


def betting_p_value(losses: np.ndarray, tolerance: float, alpha: float) -> float:
    """p-value of H0: E[loss] >= tolerance, for losses in LOSS_RANGE: 1 / the largest wealth of a bettor who bets,
    with predictable stakes, that the losses run below the tolerance (Ville). The losses are taken in a fixed
    shuffled order, so a caller's order (say, by confidence) cannot make exchangeable losses look like a trend."""
    low, high = LOSS_RANGE
    x = (np.asarray(losses, dtype=np.float64) - low) / (high - low)  # (n,) in [0, 1]
    x = x[np.random.default_rng(SHUFFLE_SEED).permutation(x.size)]
    mu = (tolerance - low) / (high - low)
    if x.size == 0 or mu >= 1.0:
        return 1.0 if x.size == 0 else 0.0
    t = np.arange(1, x.size + 1)
    mean_before = (0.5 + np.r_[0.0, np.cumsum(x)[:-1]]) / t  # (n,) estimates from the losses before each
    spread = (0.25 + np.r_[0.0, np.cumsum((x - mean_before) ** 2)[:-1]]) / t
    stake = np.minimum(np.sqrt(2 * np.log(1 / alpha) / (x.size * spread)), MAX_BET / (1 - mu))
    wealth = np.cumsum(np.log1p(stake * (mu - x)))  # (n,) log wealth after each loss
    return float(min(1.0, np.exp(-wealth.max())))


@dataclass(frozen=True)
class Choice:
    """The candidate Learn-then-Test chose and the evidence for it."""

    chain: int
    index: int  # position in its chain
    risk: float  # its mean loss on the calibration queries
    p_value: float  # its betting p-value, to compare with alpha / chains
    cost: float


def shown(losses: np.ndarray, tolerance: float, level: float) -> list[tuple[float, float]]:
    """(risk, p-value) of the leading candidates of one chain, losses (candidates, n), that a fixed-sequence test at
    `level` shows below `tolerance`; it stops at the first candidate not shown."""
    passed = []
    for row in np.asarray(losses, dtype=np.float64):
        risk, p = float(row.mean()), betting_p_value(row, tolerance, level)
        if p > level or risk > tolerance:
            break
        passed.append((risk, p))
    return passed


def choose(chains: Sequence[np.ndarray], costs: Sequence[Sequence[float]], tolerance: float,
           alpha: float) -> Choice | None:
    """The cheapest candidate shown below `tolerance`, each chain (candidates, n) tested in fixed sequence at
    alpha / len(chains); costs[c][j] is candidate j of chain c's cost. None when no candidate is shown."""
    if not 0 < alpha < 1:
        raise RiclError(f"alpha must be in (0, 1), got {alpha}")
    if any(np.ndim(c) != 2 or np.shape(c)[1] == 0 for c in chains):
        raise RiclError("each chain's losses must be (candidates, calibration queries) with at least one query")
    level = alpha / len(chains)
    found = [Choice(c, j, risk, p, float(costs[c][j]))
             for c, chain in enumerate(chains) for j, (risk, p) in enumerate(shown(chain, tolerance, level))]
    return min(found, key=lambda choice: (choice.cost, choice.risk), default=None)
