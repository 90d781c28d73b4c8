"""Controls for the kernel claims: does the best head explain anything a one-line rule does not?

For one selector (its runs under every seed, pooled; a query is a cluster), on the held-out queries of many seeded
selection/held-out splits:
- baselines: the majority of the shown demonstrations' labels, the last demonstration's label (the one next to the
  query), the first one's, the most similar one's under the experiment's encoder, and the LM's own label prior (its
  prediction on the content-free prompt with the same demonstrations, when the run was calibrated);
- the best head (chosen on each split's selection queries): agreement with the LM's raw prediction, accuracy,
  Cohen's kappa against the LM, and its margin over the best baseline;
- a permutation null: the demonstrations' labels shuffled within each prompt (attention unchanged), the best head
  chosen again on each split, its held-out agreement averaged over the splits, at least 200 times.

Every rate is the mean over the splits of its held-out value; its 95% interval pools a paired bootstrap of each
split's held-out queries (clusters of query ids) over the splits, so it holds both the query sampling and the split.

    controls = ReconstructionControls(n_splits=20).fit(weights, labels, predictions, gold, query_ids, baselines)
    controls.summary_["margin_over_best_baseline"], controls.p_value_, controls.layers_
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from ..errors import RiclError
from ..record import RunRecord
from ..stats import cluster_bootstrap_means
from .attention import selection_split
from .votes import argmax_breaking_ties

BASELINES = ("majority", "last_demo", "first_demo", "nearest_demo", "lm_prior")
N_SPLITS, N_NULL = 20, 200


def baseline_predictions(records: Sequence[RunRecord], n_labels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Each baseline's label per record, (queries,); -1 where a record shows no demonstration. lm_prior only when
    every record was calibrated: argmax of the content-free log-probs, label_log_probs - calibrated_log_probs up to a
    constant."""
    labels = [np.asarray(r.demo_labels, dtype=np.int64) for r in records]
    counts = np.stack([np.bincount(y, minlength=n_labels) for y in labels]).astype(np.float64)  # (Q, C)
    majority, _ = argmax_breaking_ties(counts, seed)
    empty = np.array([y.size == 0 for y in labels])
    out = {"majority": np.where(empty, -1, majority),
           "last_demo": np.array([y[-1] if y.size else -1 for y in labels]),
           "first_demo": np.array([y[0] if y.size else -1 for y in labels]),
           "nearest_demo": np.array([y[int(np.argmax(r.encoder_similarities))] if y.size else -1
                                     for y, r in zip(labels, records)])}
    if all(r.calibrated_log_probs is not None for r in records):
        prior = np.array([r.label_log_probs for r in records]) - np.array([r.calibrated_log_probs for r in records])
        out["lm_prior"] = prior.argmax(1)
    return out


def padded(weights: Sequence[np.ndarray], demo_labels: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:
    """Per-query (L, H, D_q) weights and D_q labels padded to the longest prompt: weights (Q, L*H, D), labels
    (Q, D), mask (Q, D) True on real demonstrations (padding weighs 0)."""
    heads = weights[0].shape[0] * weights[0].shape[1]
    width = max(max(len(y) for y in demo_labels), 1)
    w = np.zeros((len(weights), heads, width))
    y = np.zeros((len(weights), width), dtype=np.int64)
    mask = np.zeros((len(weights), width), dtype=bool)
    for q, (wq, yq) in enumerate(zip(weights, demo_labels)):
        n = len(yq)
        w[q, :, :n] = np.asarray(wq, dtype=np.float64).reshape(heads, n)
        y[q, :n], mask[q, :n] = yq, True
    return w, y, mask


def head_predictions(weights: np.ndarray, labels: np.ndarray, n_labels: int, seed: int = 0) -> np.ndarray:
    """Each head's reconstruction: argmax over labels of its summed weights, ties at random: (Q, heads)."""
    onehot = np.eye(n_labels)[labels]  # (Q, D, C)
    votes = np.einsum("qhd,qdc->qhc", weights, onehot)  # padding weighs 0, so its label 0 adds nothing
    return argmax_breaking_ties(votes, seed)[0]


def shuffled_labels(labels: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The labels permuted within each prompt, among its real demonstrations only: (Q, D)."""
    keys = np.where(mask, rng.random(labels.shape), 2.0)  # padding sorts last and stays padding
    return np.take_along_axis(labels, np.argsort(keys, axis=1), axis=1)


def best_heads(agree: np.ndarray, right: np.ndarray, selection: np.ndarray) -> np.ndarray:
    """Per split, the head with the highest selection agreement (ties: accuracy, then the lower index): (S,).
    agree, right: (Q, heads) bool; selection: (S, Q) bool."""
    share = selection / selection.sum(1, keepdims=True)  # (S, Q)
    sel_agree, sel_right = share @ agree, share @ right  # (S, heads)
    return np.array([np.lexsort((-r, -a))[0] for a, r in zip(sel_agree, sel_right)])


def heldout_agreement(agree: np.ndarray, right: np.ndarray, selection: np.ndarray) -> float:
    """Mean over splits of the held-out agreement of each split's best head: the null's statistic."""
    chosen = best_heads(agree, right, selection)  # (S,)
    held = ~selection
    return float(np.mean([agree[h, c].mean() for h, c in zip(held, chosen)]))


def kappa(a: np.ndarray, b: np.ndarray, n_labels: int) -> float:
    """Cohen's kappa of two label vectors; 0 where it is undefined (both give one and the same label throughout:
    no agreement beyond what chance gives)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the undefined case, which the nan below marks
        value = cohen_kappa_score(a, b, labels=list(range(n_labels)))
    return 0.0 if np.isnan(value) else float(value)


class ReconstructionControls:
    """The best head's reconstruction against baselines over repeated seeded splits, with a permutation null.

    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 2, (60, 8))
    >>> w = rng.random((60, 1, 2, 8)); w[:, 0, 1] = 0; w[:, 0, 1, -1] = 1  # head 1 reads the last demo only
    >>> c = ReconstructionControls(n_splits=5, n_null=20).fit(w, labels, labels[:, -1], labels[:, -1],
    ...     baselines={"last_demo": labels[:, -1]})
    >>> c.summary_["reconstruction_agreement"]["value"], c.summary_["margin_over_best_baseline"]["value"]
    (1.0, 0.0)
    """

    def __init__(self, n_splits: int = N_SPLITS, selection_fraction: float = 0.7, selection_n: int | None = None,
                 seed: int = 0, n_null: int = N_NULL, n_resamples: int = 2000):
        self.n_splits, self.selection_fraction, self.selection_n = n_splits, selection_fraction, selection_n
        self.seed, self.n_null, self.n_resamples = seed, n_null, n_resamples

    def fit(self, weights: Sequence[np.ndarray], demo_labels: Sequence[Sequence[int]], predictions: Sequence[int],
            gold: Sequence[int], query_ids: Sequence | None = None, baselines: dict[str, np.ndarray] | None = None,
            n_labels: int | None = None, extra_hits: dict[str, np.ndarray] | None = None,
            extra_heads: dict[str, np.ndarray] | None = None) -> "ReconstructionControls":
        """weights: per query (L, H, D_q); extra_hits: metric -> (Q,) 0/1 rated like the baselines; extra_heads:
        metric -> (Q, L*H) per-head 0/1 read at each split's best head (e.g. the head kernel's accuracy)."""
        if self.n_splits < 1 or self.n_null < 0:
            raise RiclError(f"n_splits must be >= 1 and n_null >= 0, got {self.n_splits} and {self.n_null}")
        self.shape_ = np.asarray(weights[0]).shape[:2]  # (L, H)
        w, y, mask = padded(weights, demo_labels)
        n_labels = self.n_labels_ = n_labels or int(max(y.max(), np.max(predictions), np.max(gold)) + 1)
        self.predictions_, self.gold_ = np.asarray(predictions), np.asarray(gold)
        ids = list(range(len(w))) if query_ids is None else list(query_ids)
        self.clusters_ = np.unique(np.array(ids, dtype=str), return_inverse=True)[1]  # (Q,)
        self.selection_ = np.stack([selection_split(ids, self.selection_fraction, self.selection_n, self.seed + s)
                                    for s in range(self.n_splits)])  # (S, Q)
        self.reconstructed_ = head_predictions(w, y, n_labels, self.seed)  # (Q, heads)
        agree, right = self._hits(self.reconstructed_)
        self.heads_ = best_heads(agree, right, self.selection_)  # (S,) flat head index per split
        self.layers_ = Counter(int(h) // self.shape_[1] for h in self.heads_)
        self._rate_everything(agree, right, baselines or {}, extra_hits or {}, extra_heads or {})
        self._null(w, y, mask, n_labels, agree, right)
        return self

    def _hits(self, reconstructed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q, heads) agreement with the LM's raw prediction and with gold."""
        return reconstructed == self.predictions_[:, None], reconstructed == self.gold_[:, None]

    def _at_best(self, per_head: np.ndarray) -> np.ndarray:
        """(S, Q): each split's best head's column of a (Q, heads) array."""
        return per_head[:, self.heads_].T

    def _rate_everything(self, agree, right, baselines, extra_hits, extra_heads) -> None:
        held = ~self.selection_  # (S, Q)
        rows = {"icl_accuracy": self.predictions_ == self.gold_,
                "reconstruction_agreement": self._at_best(agree), "reconstructed_accuracy": self._at_best(right)}
        rows |= {name: self._at_best(hits) for name, hits in extra_heads.items()}
        rows |= extra_hits
        self.baselines_ = list(baselines)
        for name, pred in baselines.items():
            rows[f"{name}_agreement"] = pred == self.predictions_
            rows[f"{name}_accuracy"] = pred == self.gold_
        self.summary_ = {m: self._split_rate(np.broadcast_to(h, held.shape)) for m, h in rows.items()}
        self.split_values_ = {m: self._split_means(np.broadcast_to(h, held.shape)) for m, h in rows.items()}
        head = self._at_best(self.reconstructed_)  # (S, Q)
        self.split_values_["reconstruction_kappa"] = np.array([kappa(p[h], self.predictions_[h], self.n_labels_)
                                                               for p, h in zip(head, held)])
        self.summary_["reconstruction_kappa"] = self._range(self.split_values_["reconstruction_kappa"])
        if baselines:
            self._margin(rows)

    def _split_means(self, hits: np.ndarray) -> np.ndarray:
        """(S,) held-out mean of each split's (S, Q) hits."""
        held = ~self.selection_
        return np.array([h[m].mean() for h, m in zip(np.asarray(hits, dtype=np.float64), held)])

    def _range(self, values: np.ndarray) -> dict[str, float]:
        """Mean over splits with the 2.5-97.5 percentiles of the splits."""
        return {"value": float(values.mean()), "ci_low": float(np.quantile(values, 0.025)),
                "ci_high": float(np.quantile(values, 0.975))}

    def _resamples(self, hits: np.ndarray, split: int, n: int, seed: int) -> np.ndarray:
        """n bootstrap means of one split's held-out hits, query ids resampled as clusters."""
        held = ~self.selection_[split]
        return cluster_bootstrap_means(hits[held], self.clusters_[held], n, np.random.default_rng(seed))

    def _per_split(self) -> list[int]:
        """Bootstrap resamples given to each split (they add up to n_resamples)."""
        return [len(r) for r in np.array_split(np.arange(self.n_resamples), self.n_splits)]

    def _split_rate(self, hits: np.ndarray) -> dict[str, float]:
        """Mean over splits of the held-out rate; 95% interval of the bootstrap pooled over the splits."""
        means = np.concatenate([self._resamples(np.asarray(hits[s], dtype=np.float64), s, n, self.seed + s)
                                for s, n in enumerate(self._per_split())])
        return {"value": float(self._split_means(hits).mean()), "ci_low": float(np.quantile(means, 0.025)),
                "ci_high": float(np.quantile(means, 0.975))}

    def _margin(self, rows: dict) -> None:
        """The best head's agreement minus the best baseline's, paired; the best baseline is the one with the highest
        agreement on each resample's queries (chosen after seeing them, which favours the baselines)."""
        names = [f"{b}_agreement" for b in self.baselines_]
        held = ~self.selection_
        margins, chosen, values = [], [], []
        for s, n in enumerate(self._per_split()):
            head = rows["reconstruction_agreement"][s].astype(np.float64)
            base = np.stack([np.asarray(rows[m], dtype=np.float64) for m in names])  # (B, Q)
            held_means = base[:, held[s]].mean(1)
            chosen.append(self.baselines_[int(np.argmax(held_means))])
            values.append(head[held[s]].mean() - held_means.max())
            rng = np.random.default_rng(self.seed + s)
            margins.append(self._paired_max_margin(head, base, s, n, rng))
        self.best_baselines_ = chosen
        self.split_values_["margin_over_best_baseline"] = np.array(values)
        m = np.concatenate(margins)
        self.summary_["margin_over_best_baseline"] = {"value": float(np.mean(values)),
                                                      "ci_low": float(np.quantile(m, 0.025)),
                                                      "ci_high": float(np.quantile(m, 0.975))}

    def _paired_max_margin(self, head: np.ndarray, base: np.ndarray, split: int, n: int,
                           rng: np.random.Generator) -> np.ndarray:
        """n resampled margins of one split: head mean minus the largest baseline mean on the same resample."""
        held = ~self.selection_[split]
        ids = np.unique(self.clusters_[held], return_inverse=True)[1]
        counts = np.bincount(ids).astype(np.float64)
        head_sums = np.bincount(ids, head[held])
        base_sums = np.stack([np.bincount(ids, b[held]) for b in base])  # (B, clusters)
        picks = rng.integers(0, counts.size, size=(n, counts.size))
        total = counts[picks].sum(1)
        return head_sums[picks].sum(1) / total - (base_sums[:, picks].sum(2) / total).max(0)

    def _null(self, w, y, mask, n_labels, agree, right) -> None:
        """Held-out agreement of the best head (mean over splits) with real labels and with shuffled ones."""
        self.statistic_ = heldout_agreement(agree, right, self.selection_)
        rng = np.random.default_rng(self.seed)
        null = []
        for _ in range(self.n_null):
            shuffled = head_predictions(w, shuffled_labels(y, mask, rng), n_labels, self.seed)
            null.append(heldout_agreement(*self._hits(shuffled), self.selection_))
        self.null_ = np.array(null)
        self.p_value_ = float((1 + (self.null_ >= self.statistic_ - 1e-12).sum()) / (1 + self.n_null))

    def verdict(self) -> str:
        """One sentence: does the head beat the best baseline, and does it read the labels beyond the null?"""
        m = self.summary_.get("margin_over_best_baseline")
        beats = ("has no baseline to beat" if m is None else
                 f"beats the best baseline (margin {m['value']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}])"
                 if m["ci_low"] > 0 else
                 f"does not beat the best baseline (margin {m['value']:+.3f} [{m['ci_low']:+.3f}, "
                 f"{m['ci_high']:+.3f}], interval not above 0)")
        null = (f"shuffled labels do worse (permutation p = {self.p_value_:.3g})" if self.p_value_ < 0.05 else
                f"shuffled labels do as well (permutation p = {self.p_value_:.3g})")
        return f"The best head {beats}; {null}."

    def layer_counts(self) -> dict[int, int]:
        """Chosen layer -> number of splits, every layer listed (zeros too)."""
        return {layer: self.layers_.get(layer, 0) for layer in range(self.shape_[0])}

    def head_names(self) -> list[str]:
        """Each split's chosen head as 'L{layer}H{head}'."""
        return [f"L{h // self.shape_[1]}H{h % self.shape_[1]}" for h in self.heads_]
