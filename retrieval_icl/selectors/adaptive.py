"""Adaptive: per query, as few of the nearest demonstrations as the kernel estimate needs (1..k), k when it is unsure.

The kernel view of ICL (Han et al. 2023) says a prediction is a kernel-weighted vote of the demonstrations' labels.
When the k nearest candidates agree and sit close to the query, the vote is confident and a few of them carry it;
when they disagree or sit far, every one of them counts. So, per query:

1. the k nearest candidates (k is the maximum, k_max) and the `KernelSurrogate` estimate p over them, with the
   fitted bandwidth and `prior` pseudo-demonstrations (so far neighbours give a weak, uncertain estimate);
2. its confidence c = max_y p(y);
3. the smallest level m in 1, 2, 4, ... < k whose threshold c passes (thresholds fall as m grows); else k.

`fit(index)` draws two disjoint sets of queries from the pool itself, never evaluation queries: whole texts only (not
a phrase another pool text holds), each without its own text and its near-duplicates. `use_calibration(queries)`
replaces the pool's calibration draw with labelled queries drawn like the ones to come (a user's own, or in `ricl
compare`, by default, the run's other queries in cross-fitted folds), for when the pool is not drawn like them (TREC's
test questions are not drawn like its train pool). On the `n_shape` shape queries the bandwidth is fitted (kernel
leave-one-out likelihood) and candidate threshold sets are made (per-level fits at growing loss budgets, safest first,
one chain per lowest level allowed and one cutting to 1 alone). On the `n_fit` calibration queries, Learn-then-Test
(`risk_control`) keeps the cheapest candidate whose accuracy drop against all k is shown to be below `tolerance`. For
exchangeable queries the chosen thresholds' drop exceeds `tolerance` with probability at most `alpha`. The drop is
measured on the LM's own answers with 1, 2, 4, ... demonstrations (`fit_on="lm"`, the default; fitted for k = 1, 2, 4,
... and fit_depth, 8 by default) or, as a fast option without the LM, on the kernel's (`fit_on="kernel"`, every k up
to fit_depth, 32 by default; that bounds the kernel's agreement with itself, not the LM's accuracy). The fit is stored
in `index.fits["adaptive"]` and saved with the index (`DemoIndex.save`, `ricl index fit`); a later fit with the same
settings on the same pool reuses it, and without an LM a saved LM fit is reused whichever LM made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .. import risk_control
from ..data.examples import Example, fingerprint
from ..errors import RiclError
from ..retrieval.kernel_surrogate import KernelSurrogate
from .arrays import nearest
from .base import PoolTexts, Ranking, Selector
from .checks import check_fraction, check_greater, check_order, check_positive_int

if TYPE_CHECKING:
    from ..retrieval.index import DemoIndex

FIT_ON = ("kernel", "lm")  # what the thresholds are fitted to: the kernel's answers, or the LM's own
BANDWIDTHS = np.geomspace(0.01, 10.0, 61)  # the grid the bandwidth is fitted on
NEVER = 1.0 + 1e-9  # a threshold no confidence reaches
KERNEL_DEPTH, LM_DEPTH = 32, 8  # the default fit depths: the kernel fit is cheap, the LM fit runs the LM
SHAPE_BUDGETS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)  # candidates' loss budgets


def levels(k: int) -> list[int]:
    """The demonstration counts adaptive chooses between for a maximum k: 1, 2, 4, ... below k, then k."""
    return sorted({2**i for i in range(k.bit_length()) if 2**i < k} | {k})


class AdaptiveSelector(Selector):
    """Per query 1..k nearest demonstrations: fewer when the kernel estimate over the k nearest is confident."""

    name = "adaptive"
    fits_state = True
    up_to_k = True

    def __init__(self, bandwidth: float | None = None, prior: float = 1.0,
                 thresholds: Mapping[Any, float] | None = None, tolerance: float = 0.03, alpha: float = 0.1,
                 n_fit: int = 500, n_shape: int = 2000, fit_depth: int | None = None, fit_on: str = "lm",
                 order: str = "nearest_last", seed: int = 0):
        self.order, self.seed = check_order(order), seed
        if fit_on not in FIT_ON:
            raise RiclError(f"fit_on must be one of {FIT_ON}, got {fit_on!r}")
        self.fit_on = fit_on
        self.bandwidth = None if bandwidth is None else float(check_greater("bandwidth", bandwidth, 0))
        self.prior = float(check_greater("prior", prior, 0))
        self.tolerance = float(check_fraction("tolerance", tolerance))
        self.alpha = float(check_fraction("alpha", alpha))
        if not 0 < self.alpha < 1:
            raise RiclError(f"alpha must be in (0, 1), got {alpha}")
        self.n_fit, self.n_shape = check_positive_int("n_fit", n_fit), check_positive_int("n_shape", n_shape)
        # the LM answers every calibration query at each level up to the depth: 8 keeps that to 4 prompts a query
        self.fit_depth = check_positive_int("fit_depth", fit_depth or (LM_DEPTH if fit_on == "lm" else KERNEL_DEPTH))
        self.thresholds = None if thresholds is None else checked_thresholds(thresholds)
        self.calibration: list[Example] = []  # labelled queries to calibrate on instead of a pool draw

    def use_calibration(self, queries: Sequence[Example]) -> "AdaptiveSelector":
        """Calibrate on these labelled queries (drawn like the queries to come) instead of a draw from the pool; the
        shape queries still come from the pool. Returns self."""
        if not queries:
            raise RiclError("adaptive's calibration queries are empty; give at least one labelled query")
        self.calibration = list(queries)
        return self

    def settings(self) -> dict[str, Any]:
        """The parameters a saved fit depends on."""
        lm = {"lm": self.lm_name} if self.uses_lm else {}
        if self.calibration:
            lm["calibration"] = f"{len(self.calibration)} queries, fingerprint {fingerprint(self.calibration)}"
        return {"bandwidth": self.bandwidth, "prior": self.prior, "tolerance": self.tolerance, "alpha": self.alpha,
                "n_fit": self.n_fit, "n_shape": self.n_shape, "fit_depth": self.fit_depth, "fit_on": self.fit_on,
                "seed": self.seed, **lm}

    @property
    def uses_seed(self) -> bool:
        """True unless bandwidth and thresholds are given: the seed draws the fit's queries (and a run's folds)."""
        return self.thresholds is None or self.bandwidth is None or super().uses_seed

    @property
    def calibrates(self) -> bool:
        """True unless the thresholds are given: then nothing is calibrated."""
        return self.thresholds is None

    @property
    def uses_lm(self) -> bool:
        """True when the thresholds are to be fitted to the LM's answers (not given)."""
        return self.fit_on == "lm" and self.thresholds is None

    def fit(self, index: "DemoIndex") -> "AdaptiveSelector":
        """Fit bandwidth and thresholds on queries drawn from the pool, or reuse the fit saved with the index."""
        super().fit(index)
        saved = index.fits.get(self.name)
        if not (saved and self.reusable(saved, index.manifest.dataset_fingerprint)):
            fingerprint = index.manifest.dataset_fingerprint
            saved = {"settings": self.settings(), "fingerprint": fingerprint, "count": len(index),
                     **fit_adaptive(self, index)}
            index.fits[self.name] = saved
        self.fitted_ = saved
        self.surrogate_ = KernelSurrogate(saved["n_labels"], saved["bandwidth"], self.prior)
        return self

    def reusable(self, saved: dict[str, Any], fingerprint: str) -> bool:
        """True when a saved fit was made on this pool with these settings. A selector with no LM attached only uses a
        saved fit (a service): it takes an LM fit made with any LM and a fit calibrated on any queries (the saved fit
        names which)."""
        consumer = self.label_probs is None and not self.calibration
        ignored = ({"calibration"} | ({"lm"} if self.uses_lm else set())) if consumer else set()
        saved_settings, settings = ({key: v for key, v in d.items() if key not in ignored}
                                    for d in (saved["settings"], self.settings()))
        return saved["fingerprint"] == fingerprint and saved_settings == settings

    def thresholds_for(self, k: int) -> dict[int, float]:
        """Level -> confidence threshold for a maximum of k demonstrations."""
        if self.thresholds is not None:
            return {m: t for m, t in self.thresholds.items() if m < k}
        fitted = self.fitted_["thresholds"]
        if str(k) not in fitted:
            raise RiclError(f"adaptive was fitted for k in {sorted(map(int, fitted))} (fit_depth={self.fit_depth}, "
                            f"pool of {self.fitted_['count']}, fit_on={self.fit_on!r}); got k={k}: fit with a larger "
                            "fit_depth (the LM fit is for k = 1, 2, 4, ... and fit_depth) or ask for one of those k")
        return {int(m): t for m, t in fitted[str(k)].items()}

    def _choose(self, texts: list[str], embeddings: np.ndarray, k: int) -> list[Ranking]:
        thresholds = self.thresholds_for(k)
        ids, scores = nearest(self.index_, embeddings, k, [self.pool_.excluded_ids(t) for t in texts])  # (n, k)
        rankings = []
        for row_ids, row_scores in zip(ids, scores):
            found = row_ids >= 0
            row_ids, row_scores = row_ids[found], row_scores[found]
            labels = [self.index_.example(int(i)).label for i in row_ids]
            confidence = float(self.surrogate_.predict(row_scores, labels).max())
            m = next((m for m in sorted(thresholds) if confidence >= thresholds[m]), len(row_ids))
            rankings.append(([int(i) for i in row_ids[:m]], [float(s) for s in row_scores[:m]]))
        return rankings

    def fit_report(self) -> dict[str, Any]:
        """The fitted bandwidth, the thresholds per k and the fit queries' kernel accuracy and mean count."""
        report = {k: v for k, v in self.fitted_.items() if k != "settings"}
        if self.thresholds is not None:
            report["thresholds"] = {"given": {str(m): t for m, t in self.thresholds.items()}}
        return {"settings": self.settings(), **report}


def checked_thresholds(thresholds: Mapping[Any, float]) -> dict[int, float]:
    """Level -> threshold, levels positive integers (JSON and YAML may give them as strings), thresholds in [0, 1]."""
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise RiclError(f"thresholds must be a non-empty mapping of level -> confidence, got {thresholds!r}")
    out = {}
    for level, value in thresholds.items():
        m = int(level) if isinstance(level, str) and level.isdigit() else level
        out[check_positive_int("a thresholds level", m)] = float(check_fraction(f"thresholds[{level}]", value))
    return out


def fit_adaptive(selector: AdaptiveSelector, index: "DemoIndex") -> dict[str, Any]:
    """Bandwidth and thresholds per level: for every k up to the fit depth against the kernel's own answers, or
    (fit_on="lm") for k = 1, 2, 4, ... and the fit depth against the LM's answers at those levels. Candidate
    thresholds come from the shape queries (the kernel's answers); Learn-then-Test on the disjoint calibration
    queries picks one."""
    shape, calibration = neighbourhoods(selector, index)
    n_labels, depth = calibration.n_labels, calibration.cosines.shape[1]
    bandwidth = selector.bandwidth or fit_bandwidth(shape.cosines, shape.labels, shape.gold, n_labels, selector.prior)
    surrogate = KernelSurrogate(n_labels, bandwidth, selector.prior)
    shape_probs = surrogate.predict_prefixes(shape.cosines, shape.labels)  # (n_shape, depth, L)
    probs = surrogate.predict_prefixes(calibration.cosines, calibration.labels)  # (n, depth, L)
    ks = levels(depth) if selector.uses_lm else range(1, depth + 1)  # the LM answers at the levels only
    answers = lm_answers(selector, calibration, depth) if selector.uses_lm else probs.argmax(axis=2)  # (n, depth)
    thresholds, outcome = {}, {}
    for k in ks:
        confidence = probs[:, k - 1].max(axis=1)  # the kernel estimate over the k nearest, as `_choose` computes it
        chains = candidate_chains(shape_probs[:, k - 1].max(axis=1), shape_probs.argmax(axis=2), shape.gold, k)
        losses = [np.stack([paired_losses(confidence, answers, calibration.gold, k, c) for c in chain])
                  for chain in chains]
        costs = [[chosen_levels(confidence, k, c).mean() for c in chain] for chain in chains]
        choice = risk_control.choose(losses, costs, selector.tolerance, selector.alpha) if chains else None
        thresholds[str(k)] = chains[choice.chain][choice.index] if choice else never(k)
        outcome[str(k)] = {**fit_outcome(confidence, answers, calibration.gold, k, thresholds[str(k)]),
                           "calibration_drop": choice.risk if choice else 0.0,
                           "p_value": choice.p_value if choice else None, "chains": len(chains),
                           "candidates": sum(map(len, chains))}
    return {"n_labels": n_labels, "bandwidth": float(bandwidth), "depth": depth, "n_fit_queries": len(calibration.gold),
            "n_shape_queries": len(shape.gold), "fit_on": selector.fit_on, "tolerance": selector.tolerance,
            "alpha": selector.alpha, "thresholds": thresholds, "fit_accuracy": outcome}


def never(k: int) -> dict[str, float]:
    """Thresholds no confidence passes: always all k."""
    return {str(m): NEVER for m in levels(k)[:-1]}


def allowed_levels(k: int) -> list[set[int]]:
    """The levels below k each chain may cut to: every level from a lowest one up (k/2 .. 1), then 1 alone. The shape
    queries come from the pool; whether the middle levels are safe on the queries to come (TREC's test questions
    lose at 4 what they keep at 1) is the calibration's to show, so it gets a chain without them. One chain more
    costs power (Bonferroni across chains), so only the one that saves the most."""
    below = levels(k)[:-1]
    return [{m for m in below if m >= lowest} for lowest in below[::-1]] + ([{1}] if len(below) > 1 else [])


def candidate_chains(confidence: np.ndarray, answers: np.ndarray, gold: np.ndarray,
                     k: int) -> list[list[dict[str, float]]]:
    """Candidate threshold sets, one chain per set of levels allowed (`allowed_levels`), each from the per-level fit
    on the shape queries at growing loss budgets (safe to permissive), repeats and always-k dropped. Made before the
    calibration queries are looked at."""
    fitted, chains = [fit_thresholds(confidence, answers, gold, k, budget) for budget in SHAPE_BUDGETS], []
    for allowed in allowed_levels(k):
        chain = [{m: (t if int(m) in allowed else NEVER) for m, t in fit.items()} for fit in fitted]
        unique = [dict(c) for c in dict.fromkeys(tuple(c.items()) for c in chain) if dict(c) != never(k)]
        if unique:
            chains.append(unique)
    return chains


def chosen_levels(confidence: np.ndarray, k: int, thresholds: dict[str, float]) -> np.ndarray:
    """The level each query gets under the thresholds: the smallest it passes, as in `_choose`, else k: (n,)."""
    chosen = np.full(len(confidence), k)
    for m, t in sorted(((int(m), t) for m, t in thresholds.items()), reverse=True):
        chosen[confidence >= t] = m
    return chosen


def paired_losses(confidence: np.ndarray, answers: np.ndarray, gold: np.ndarray, k: int,
                  thresholds: dict[str, float]) -> np.ndarray:
    """Per query, 1 when the answer with all k is right and the policy's wrong, -1 the reverse, else 0: (n,)."""
    policy = answers[np.arange(len(gold)), chosen_levels(confidence, k, thresholds) - 1]
    return (answers[:, k - 1] == gold).astype(np.float64) - (policy == gold)


def lm_answers(selector: AdaptiveSelector, near: "Neighbourhoods", k: int) -> np.ndarray:
    """The LM's prediction for each fit query with its first m neighbours, at each level m of k (other columns -1):
    (n, k). One call to the selector's `label_probs` for all of them."""
    if selector.label_probs is None:
        raise RiclError("adaptive with fit_on='lm' (the default) fits its thresholds to the language model's answers "
                        "and this index holds no such fit: save one with `ricl index fit INDEX --model NAME` (or call "
                        "use_lm(label_probs) before fit, as `ricl compare` does), or pass fit_on='kernel' for the fast "
                        "fit without the LM")
    texts, ids, cosines = near.texts, near.ids, near.cosines
    asks = [(q, m) for q in range(len(ids)) for m in levels(k)]
    prompts = [selector.in_prompt_order(texts[q], ([int(i) for i in ids[q, :m]], cosines[q, :m].tolist()))
               for q, m in asks]
    predicted = np.asarray(selector.label_probs([texts[q] for q, _ in asks], prompts)).argmax(axis=1)
    answers = np.full(ids.shape, -1, dtype=np.int64)
    for (q, m), y in zip(asks, predicted):
        answers[q, m - 1] = y
    return answers


@dataclass(frozen=True)
class Neighbourhoods:
    """The fit queries (pool rows) and their nearest other pool examples."""

    texts: list[str]  # (n,) the queries' texts
    ids: np.ndarray  # (n, depth) their nearest others' ids, nearest first
    cosines: np.ndarray  # (n, depth) float64
    labels: np.ndarray  # (n, depth) those neighbours' labels
    gold: np.ndarray  # (n,) the queries' own labels
    n_labels: int


def fit_rows(selector: AdaptiveSelector, pool: PoolTexts) -> tuple[np.ndarray, np.ndarray]:
    """Pool rows drawn with the seed among the whole texts: the shape queries and the calibration queries,
    disjoint (calibration first, at most half of them; none when the selector was given its calibration queries)."""
    wanted = 0 if selector.calibration else selector.n_fit
    drawn = whole_rows(pool, np.random.default_rng(selector.seed).permutation(len(pool)), wanted + selector.n_shape)
    n_calibration = min(wanted, len(drawn) // 2)
    return drawn[n_calibration:], drawn[:n_calibration]


def whole_rows(pool: PoolTexts, rows: np.ndarray, wanted: int) -> np.ndarray:
    """The first `wanted` of the rows whose text no other pool text holds. SST-2's train split holds every
    sentence's parse-tree phrases; a phrase is no stand-in for the sentences a run is asked about."""
    kept = []
    for row in rows:
        if not pool.duplicates.holders(pool.texts[row]):
            kept.append(int(row))
            if len(kept) == wanted:
                break
    return np.array(kept, dtype=np.int64)


def neighbourhoods(selector: AdaptiveSelector, index: "DemoIndex") -> tuple[Neighbourhoods, Neighbourhoods]:
    """The shape and calibration queries and their nearest other pool examples, near-duplicates of a pool-drawn query
    left out (a pool of sub- and super-phrases would otherwise show fit queries neighbours real queries never see).
    Depth is fit_depth, or less where a query's pool without them is smaller; rows an approximate index answers
    with fewer neighbours are left out."""
    pool = selector.pool_
    shape_rows, calibration_rows = fit_rows(selector, pool)
    if (len(calibration_rows) == 0 and not selector.calibration) or len(shape_rows) == 0:
        raise RiclError(f"adaptive needs a pool of at least 2 examples to fit on (shape and calibration queries), "
                        f"got {len(pool)}")
    label_of = {int(ex.id): ex.label for ex in index.examples}
    names = index.manifest.label_names
    n_labels = max(len(names) if names else 0, max(label_of.values()) + 1, 2)
    shape = (pool.texts[shape_rows].tolist(), index.embeddings(pool.ids[shape_rows]),
             [label_of[int(i)] for i in pool.ids[shape_rows]])
    if selector.calibration:
        gold, texts = checked_labels(selector.calibration, n_labels), [q.text for q in selector.calibration]
        calibration = (texts, index.encoder.encode(texts), gold)
    else:
        calibration = (pool.texts[calibration_rows].tolist(), index.embeddings(pool.ids[calibration_rows]),
                       [label_of[int(i)] for i in pool.ids[calibration_rows]])
    # Given queries are calibrated on what they would be shown (the selector's own near-duplicate setting).
    excluded = [[pool.excluded_ids(t, near_duplicates=True if drawn else None) for t in part[0]]
                for part, drawn in ((shape, True), (calibration, not selector.calibration))]
    depth = min([selector.fit_depth] + [len(pool) - len(x) for part in excluded for x in part])
    if depth < 1:
        raise RiclError(f"adaptive needs a pool where each query has another example to fit on; got {len(pool)}")
    return tuple(neighbours_of(index, *part, ex, depth, label_of, n_labels)
                 for part, ex in zip((shape, calibration), excluded))


def checked_labels(queries: Sequence[Example], n_labels: int) -> list[int]:
    """The calibration queries' labels, each one of the pool's label ids."""
    for q in queries:
        if not 0 <= q.label < n_labels:
            raise RiclError(f"adaptive's calibration query {q.id} has label {q.label}; expected a label id in "
                            f"0..{n_labels - 1}, as the pool's")
    return [q.label for q in queries]


def neighbours_of(index: "DemoIndex", texts: list[str], vectors: np.ndarray, gold: list[int],
                  excluded: list[set[int]], depth: int, label_of: dict[int, int], n_labels: int) -> Neighbourhoods:
    """The depth nearest pool examples of each query (text, unit vector (n, d), label) but its excluded ids."""
    found_ids, cosines = nearest(index, vectors, depth, excluded)  # (n, depth) each
    full = (found_ids >= 0).all(axis=1)  # an approximate index (IVF, HNSW) may find fewer; those rows are left out
    labels = np.array([[label_of[int(i)] for i in row] for row in found_ids[full]], dtype=np.int64).reshape(-1, depth)
    return Neighbourhoods([t for t, keep in zip(texts, full) if keep], found_ids[full],
                          cosines[full].astype(np.float64), labels, np.asarray(gold, dtype=np.int64)[full], n_labels)


def fit_bandwidth(cosines: np.ndarray, labels: np.ndarray, gold: np.ndarray, n_labels: int, prior: float) -> float:
    """The bandwidth on BANDWIDTHS whose estimate over all fit neighbours gives the fit queries' labels the highest
    mean log-likelihood."""
    rows = np.arange(len(gold))
    scores = [np.log(KernelSurrogate(n_labels, h, prior).predict_prefixes(cosines, labels)[rows, -1, gold]).mean()
              for h in BANDWIDTHS]
    return float(BANDWIDTHS[int(np.argmax(scores))])


def fit_thresholds(confidence: np.ndarray, answers: np.ndarray, gold: np.ndarray, k: int,
                   tolerance: float) -> dict[str, float]:
    """Per level m < k, the lowest confidence threshold at which answering with m neighbours instead of k loses at
    most an equal share of `tolerance` x n fit queries, net; thresholds made non-increasing in m.

    confidence: (n,) the kernel estimate's over the k nearest; answers: (n, >= k) the answer with the first m
    neighbours in column m - 1 (the kernel's or the LM's); gold: (n,)."""
    wrong_k = answers[:, k - 1] != gold
    allowed = tolerance * len(gold) / max(len(levels(k)) - 1, 1)  # the levels share the loss
    order = np.argsort(-confidence, kind="stable")
    thresholds: dict[int, float] = {}
    for m in levels(k)[:-1]:
        loss = (answers[:, m - 1] != gold).astype(int) - wrong_k  # (n,) +1 lost, -1 gained
        net = np.cumsum(loss[order])  # net loss when the i+1 most confident queries use m
        over = np.flatnonzero(net > allowed)
        last = over[0] - 1 if over.size else len(order) - 1  # the least confident query before the budget breaks
        # Queries tied with the first one over budget would pass the threshold too: it must sit above them.
        while over.size and last >= 0 and confidence[order[last]] <= confidence[order[over[0]]]:
            last -= 1
        thresholds[m] = float(confidence[order[last]]) if last >= 0 else NEVER
    for small, large in zip(levels(k)[-2::-1], levels(k)[-1:0:-1]):
        if large in thresholds:
            thresholds[small] = max(thresholds[small], thresholds[large])
    return {str(m): t for m, t in sorted(thresholds.items())}


def fit_outcome(confidence: np.ndarray, answers: np.ndarray, gold: np.ndarray, k: int,
                thresholds: dict[str, float]) -> dict[str, float]:
    """On the fit queries: accuracy of the answers with all k and with the adaptive count, and the mean count."""
    chosen = chosen_levels(confidence, k, thresholds)
    adaptive = answers[np.arange(len(gold)), chosen - 1]
    return {"accuracy_k": float((answers[:, k - 1] == gold).mean()),
            "accuracy_adaptive": float((adaptive == gold).mean()), "mean_count": float(chosen.mean())}
