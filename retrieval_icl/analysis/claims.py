"""The paper's three claims (../shared/DESIGN.md) tested on a study's results: the question the study declared in its
YAML before it ran, its statistic, every condition paired with the declared reference on the same queries, CIs from
a bootstrap clustered by query (a query drawn twice is one cluster), Holm within the study, and per model and task a
verdict on the primary statistic.

    question = Question(claim="bandwidth", ...)            # a study YAML's `question:`
    rows = claim_tests(question, [load_results(d) for d in archives])   # one row per test, Holm-adjusted

The verdict: supported where the Holm-adjusted test rejects 0 in the claimed direction; contradicted where it rejects
0 the other way, or where TOST at the declared margin (Holm over the study's primary tests) shows no effect; else not
resolved at this n. The Holm-adjusted CI is the percentile interval at the level Holm left the test
(stats.adjusted_interval), so it excludes 0 exactly when the adjusted p-value is below alpha.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..record import RunRecord
from ..results_dir import Results
from ..stats import adjusted_interval, bootstrap_p, bootstrap_tost_p, cluster_bootstrap_ratios, holm
from .bandwidth import mean_similarity
from .distribution import REPRESENTATIVE
from .votes import group_by

CLAIMS = {"bandwidth": "retrieving demonstrations similar to the query helps: it narrows the kernel's bandwidth",
          "label_format": "ICL is sensitive to the label format: the label tokens are the values the kernel averages",
          "distribution": "in-distribution demonstrations help: the kernel holds where the pretraining distribution "
                          "covers the inputs"}
STATISTICS = {"bandwidth": "similarity_slope", "label_format": "reference_minus_contrast",
              "distribution": "reference_minus_contrast"}
SLOPE_UNIT = 0.1  # the slope is per 0.1 of mean cosine


class Question(BaseModel):
    """What a study asks, declared in its YAML before it runs and saved with its findings."""

    model_config = ConfigDict(extra="forbid")
    claim: Literal["bandwidth", "label_format", "distribution"]
    text: str = Field(min_length=1)  # the question in words
    statistic: Literal["similarity_slope", "reference_minus_contrast"]
    reference: str  # the condition every other is paired with: a selector label, a label format or a pool
    contrast: list[str] = Field(default_factory=list)  # what reference_minus_contrast averages; [] = every other
    direction: Literal["positive", "negative"] = "positive"  # the sign the claim predicts for the statistic
    margin: float = Field(gt=0)  # TOST: an effect within +-margin (the statistic's units) counts as none
    alpha: float = Field(0.05, gt=0, lt=0.5)
    n_resamples: int = Field(10000, ge=1000)
    seed: int = 0

    @model_validator(mode="after")
    def _statistic_of_claim(self) -> "Question":
        if self.statistic != STATISTICS[self.claim]:
            raise ValueError(f"claim {self.claim} is tested by statistic {STATISTICS[self.claim]}, "
                             f"not {self.statistic}")
        return self


@dataclass
class Test:
    """One test's items: the statistic is sum(num) / sum(den), resampled by whole clusters (queries)."""

    model: str
    task: str
    name: str
    primary: bool
    num: list[float] = field(default_factory=list)
    den: list[float] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)
    draws: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def add(self, num: float, den: float, query_id: int, draw: int) -> None:
        self.num.append(num)
        self.den.append(den)
        self.clusters.append(str(query_id))
        self.draws.append(draw)


def draw_of(results: Results) -> int:
    return int(results.config.get("query_seed", 0))


def main_records(results: Results) -> list[RunRecord]:
    """Records under the experiment's first label format and first pool."""
    main = set(results.main_runs())
    return [r for r in results.records if r.run in main]


def mean_correct(records: list[RunRecord]) -> float:
    return float(np.mean([r.correct for r in records]))


def bandwidth_tests(q: Question, model: str, task: str, group: list[Results]) -> list[Test]:
    """The slope of correctness on the demonstrations' mean similarity within (draw, query, k), per SLOPE_UNIT; and
    each selector at each k against the reference selector at that k, paired by (draw, query), seeds averaged."""
    slope = Test(model, task, f"slope of accuracy per {SLOPE_UNIT} mean cosine, within query", True)
    pairs: dict[tuple, Test] = {}
    for results in group:
        draw = draw_of(results)
        for (query_id, k), recs in group_by(main_records(results), lambda r: (r.query_id, r.k)).items():
            x = np.array([mean_similarity(r) for r in recs])
            y = np.array([r.correct for r in recs], dtype=float)
            x, y = x - x.mean(), y - y.mean()
            slope.add(SLOPE_UNIT * float(x @ y), float(x @ x), query_id, draw)
            by_label = group_by(recs, lambda r: r.selector)
            if q.reference not in by_label:
                continue
            ref = mean_correct(by_label[q.reference])
            for label, mine in by_label.items():
                if label != q.reference:
                    test = pairs.setdefault((label, k), Test(model, task, f"{label} - {q.reference}, k={k}", False))
                    test.add(mean_correct(mine) - ref, 1.0, query_id, draw)
                    test.extra.setdefault("similarity", []).append(np.mean([mean_similarity(r) for r in mine]))
                    test.extra.setdefault("gold_label_share", []).append(np.mean([gold_share(r) for r in mine]))
                    test.extra.setdefault("reference_gold_label_share", []).append(
                        np.mean([gold_share(r) for r in by_label[q.reference]]))
    return [slope, *pairs.values()]


def gold_share(record: RunRecord) -> float:
    """The share of the record's demonstrations that carry the query's gold label (NaN with none): nearer
    demonstrations often share the query's label, so a label-copying model gains from them without any kernel."""
    return float(np.mean([label == record.gold for label in record.demo_labels])) if record.demo_labels else np.nan


def contrast_tests(q: Question, model: str, task: str, group: list[Results], axis: str) -> list[Test]:
    """Conditions along `axis` (label_format or pool) paired within (draw, selector, seed, k, the other axis, query):
    the reference minus the mean of the contrast (primary), each condition minus the reference, and on the reference
    a representative selector minus random (seeds averaged)."""
    other = "pool" if axis == "label_format" else "label_format"
    primary = Test(model, task, f"{q.reference} - mean({', '.join(q.contrast) or 'every other'})", True)
    pairs: dict[str, Test] = {}
    for results in group:
        draw, rep = draw_of(results), representative_labels(results)
        cells = group_by(results.records, lambda r: (r.selector, r.seed, r.k, getattr(r, other), r.query_id))
        for (selector, _, _, _, query_id), recs in cells.items():
            by = {getattr(r, axis): r for r in recs}
            if q.reference not in by:
                continue
            ref = by[q.reference]
            contrast = [by[c] for c in (q.contrast or [c for c in by if c != q.reference]) if c in by]
            if contrast:
                primary.add(float(ref.correct) - mean_correct(contrast), 1.0, query_id, draw)
            for name, r in by.items():
                if name != q.reference:
                    test = pairs.setdefault(f"{name} - {q.reference}, {selector}",
                                            Test(model, task, f"{name} - {q.reference}, {selector}", False))
                    test.add(float(r.correct) - float(ref.correct), 1.0, query_id, draw)
                    test.extra.setdefault("similarity", []).append(mean_similarity(r))
                    test.extra.setdefault("reference_similarity", []).append(mean_similarity(ref))
        if axis == "pool":
            for test in representative_tests(q, model, task, results, rep, draw):
                pairs.setdefault(test.name, Test(model, task, test.name, False))
                merge(pairs[test.name], test)
    return [primary, *pairs.values()]


def representative_labels(results: Results) -> list[str]:
    return [label for label, spec in results.selector_specs().items() if spec["name"] in REPRESENTATIVE]


def representative_tests(q: Question, model: str, task: str, results: Results, labels: list[str],
                         draw: int) -> list[Test]:
    """Each representative selector minus random (seeds averaged) on the reference pool, paired by query."""
    randoms = {label for label, spec in results.selector_specs().items() if spec["name"] == "random"}
    on_ref = [r for r in results.records if r.pool == q.reference]
    tests = []
    for label in labels:
        test = Test(model, task, f"{label} - random, {q.reference}", False)
        for query_id, recs in group_by(on_ref, lambda r: r.query_id).items():
            mine = [r for r in recs if r.selector == label]
            base = [r for r in recs if r.selector in randoms]
            if mine and base:
                test.add(mean_correct(mine) - mean_correct(base), 1.0, query_id, draw)
        tests.append(test)
    return tests


def merge(into: Test, more: Test) -> None:
    for n, d, c, w in zip(more.num, more.den, more.clusters, more.draws):
        into.num.append(n), into.den.append(d), into.clusters.append(c), into.draws.append(w)


def tests_of(q: Question, model: str, task: str, group: list[Results]) -> list[Test]:
    if q.claim == "bandwidth":
        return bandwidth_tests(q, model, task, group)
    return contrast_tests(q, model, task, group, "label_format" if q.claim == "label_format" else "pool")


def claim_tests(q: Question, results: list[Results]) -> list[dict]:
    """Every test of the study (primary and paired), per model and task over all query draws, Holm-adjusted
    together; the primary rows carry TOST (Holm over the primary tests) and the verdict."""
    groups = group_by(results, lambda r: (r.config.get("model"), r.config.get("task") or r.task))
    tests = [t for (model, task), group in groups.items() for t in tests_of(q, model, task, group) if t.num]
    rows = [rated(q, t) for t in tests]
    for row, p in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = p
        row["holm_ci_low"], row["holm_ci_high"] = adjusted_interval(row.pop("_resampled"), row["p"], p, q.alpha)
    primary = [r for r in rows if r["primary"]]
    for row, p in zip(primary, holm([r["tost_p"] for r in primary])):
        row["tost_p_holm"] = p
        row["verdict"] = verdict(q, row)
    if q.claim == "bandwidth":  # the control for label copying, reported beside the declared tests
        rows += [label_share_control(q, model, task, group) for (model, task), group in groups.items()]
    return rows


def label_share_control(q: Question, model: str, task: str, group: list[Results]) -> dict:
    """Exploratory, declared after the first runs, outside Holm and the verdict: the within-query slope of
    correctness on mean similarity with the share of demonstrations carrying the query's gold label held fixed
    (least squares on both, within (draw, query, k); per SLOPE_UNIT). Nearer demonstrations more often share the
    query's label, so an LM that copies labels gains from them whatever its kernel; this slope is what similarity
    adds beyond that."""
    moments, clusters, draws = [], [], []  # per (draw, query, k): sums of xx, xg, gg, xy, gy after demeaning
    for results in group:
        for (query_id, _), recs in group_by(main_records(results), lambda r: (r.query_id, r.k)).items():
            x, g, y = (np.array(v, dtype=float) for v in zip(*[(mean_similarity(r), gold_share(r), r.correct)
                                                                  for r in recs]))
            x, g, y = x - x.mean(), g - g.mean(), y - y.mean()
            moments.append([x @ x, x @ g, g @ g, x @ y, g @ y])
            clusters.append(str(query_id))
            draws.append(draw_of(results))
    m = np.array(moments)  # (groups, 5)
    ids = np.unique(np.array(clusters), return_inverse=True)[1]
    per_cluster = np.stack([np.bincount(ids, m[:, j]) for j in range(5)], axis=1)  # (clusters, 5)
    rng = np.random.default_rng([q.seed, zlib.crc32(f"{model}|{task}|label share".encode())])
    picks = rng.integers(0, len(per_cluster), size=(q.n_resamples, len(per_cluster)))
    resampled = partial_slope(per_cluster[picks].sum(1))
    effect = float(partial_slope(m.sum(0)[None])[0])
    return {"claim": q.claim, "model": model, "task": task, "primary": False, "exploratory": True,
            "test": f"slope per {SLOPE_UNIT} mean cosine with the gold-label share held fixed, within query",
            "n_items": len(m), "n_queries": len(per_cluster), "effect": effect,
            "ci_low": float(np.quantile(resampled, 0.025)), "ci_high": float(np.quantile(resampled, 0.975)),
            "p": bootstrap_p(resampled)}


def partial_slope(s: np.ndarray) -> np.ndarray:
    """The similarity coefficient of least squares on (similarity, gold share), per SLOPE_UNIT, from summed
    moments (n, 5): xx, xg, gg, xy, gy."""
    xx, xg, gg, xy, gy = s.T
    with np.errstate(divide="ignore", invalid="ignore"):  # NaN where the share never varies within a query
        return SLOPE_UNIT * (gg * xy - xg * gy) / (xx * gg - xg ** 2)


def rated(q: Question, t: Test) -> dict:
    """The test's statistic, its 95% CI and bootstrap p (clusters resampled), per draw, and the means beside it."""
    num, den, clusters = np.array(t.num), np.array(t.den), np.array(t.clusters)
    rng = np.random.default_rng([q.seed, zlib.crc32(f"{t.model}|{t.task}|{t.name}".encode())])
    resampled = cluster_bootstrap_ratios(num, den, clusters, q.n_resamples, rng)
    draws = np.array(t.draws)
    row = {"claim": q.claim, "model": t.model, "task": t.task, "test": t.name, "primary": t.primary,
           "n_items": int(num.size), "n_queries": int(len(set(t.clusters))), "effect": float(num.sum() / den.sum()),
           "ci_low": float(np.quantile(resampled, 0.025)), "ci_high": float(np.quantile(resampled, 0.975)),
           "p": bootstrap_p(resampled), "_resampled": resampled}
    row |= {f"draw_{d}": float(num[draws == d].sum() / den[draws == d].sum()) for d in sorted(set(t.draws))}
    row |= {k: float(np.mean(v)) for k, v in t.extra.items()}
    if t.primary:
        row["tost_p"] = bootstrap_tost_p(resampled, q.margin)
    return row


def verdict(q: Question, row: dict) -> str:
    """Supported, contradicted, or not resolved at this n (module docstring)."""
    claimed = 1 if q.direction == "positive" else -1
    if row["p_holm"] < q.alpha:
        return "supported" if np.sign(row["effect"]) == claimed else "contradicted"
    if row["tost_p_holm"] < q.alpha:
        return f"contradicted (no effect beyond +-{q.margin:g})"
    return "not resolved at this n"
