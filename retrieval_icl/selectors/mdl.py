"""MDL (Wu et al. 2022, "Self-adaptive in-context learning"): of several candidate selections, the one whose prompt
leaves the language model least uncertain about the query's label.

Per query: `samples` selections of k drawn from its `candidates` nearest pool examples (the first is knn's own
k nearest), each arranged in the prompt order it would be shown in; the LM scores every label after each prompt,
and the selection whose label distribution has the least entropy (the shortest expected code length of the label,
which is unknown at test time) wins; ties go to the earlier sample, so knn's selection wins a tie.

It needs the LM: `use_lm(label_probs)` gives it a function from query texts and demonstration ids (prompt order) to
label probabilities. `ricl compare` passes one that renders and scores prompts exactly as the run does.
"""

from __future__ import annotations

import numpy as np

from ..errors import RiclError
from .arrays import nearest
from .base import Ranking, Selector, text_seed
from .checks import check_order, check_positive_int


class MDLSelector(Selector):
    """Minimum label entropy under the LM among `samples` k-subsets of the `candidates` nearest (knn's first)."""

    name = "mdl"
    seeded_choice = True

    def __init__(self, candidates: int = 30, samples: int = 8, order: str = "nearest_last", seed: int = 0):
        self.order, self.seed = check_order(order), seed
        self.candidates = check_positive_int("candidates", candidates)
        self.samples = check_positive_int("samples", samples)

    @property
    def uses_lm(self) -> bool:
        return True

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        if self.label_probs is None:
            raise RiclError("mdl scores candidate prompts with the language model: call use_lm(label_probs) first "
                            "(`ricl compare` does); without a model use knn, dpp or adaptive")
        depth = min(max(self.candidates, k), len(self.index_))
        ids, scores = nearest(self.index_, embeddings, depth, [self.pool_.excluded_ids(t) for t in texts])
        drawn = [self._samples(t, i[i >= 0], s[i >= 0], k) for t, i, s in zip(texts, ids, scores)]
        prompt_ids = [self.in_prompt_order(t, r) for t, rankings in zip(texts, drawn) for r in rankings]
        probs = np.asarray(self.label_probs([t for t, rs in zip(texts, drawn) for _ in rs], prompt_ids))
        entropy = label_entropy(probs)  # (queries x samples,)
        chosen, start = [], 0
        for rankings in drawn:
            chosen.append(rankings[int(np.argmin(entropy[start:start + len(rankings)]))])
            start += len(rankings)
        return chosen

    def _samples(self, text: str, ids: np.ndarray, scores: np.ndarray, k: int) -> list[Ranking]:
        """knn's k nearest, then up to samples - 1 distinct random k-subsets of the candidates, each best first."""
        rng = text_seed(self.seed, text)
        picks, seen = [list(range(k))], {tuple(range(k))}
        for _ in range(4 * self.samples):  # distinct draws; a small candidate set may hold fewer than `samples`
            if len(picks) == self.samples:
                break
            pick = sorted(rng.choice(len(ids), k, replace=False).tolist())
            if tuple(pick) not in seen:
                seen.add(tuple(pick))
                picks.append(pick)
        return [([int(ids[p]) for p in pick], [float(scores[p]) for p in pick]) for pick in picks]


def label_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of label probabilities (n, labels), renormalised."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    p = p / p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
