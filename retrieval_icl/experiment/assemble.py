"""Assemble a comparison: planned runs + their label scores -> one RunRecord per query, the attention summaries
saved beside them, and the summary rows (accuracy with a bootstrap CI, McNemar against random). No model, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data.examples import Example
from ..lm.attention_summary import demo_attention_profile, demo_attention_summary, span_attention_mass
from ..lm.prompts import Prompt
from ..lm.scoring import LabelScores, calibrate
from ..record import AttentionDigest, RunRecord
from ..selectors.base import Selection
from ..stats import bootstrap_ci, mcnemar
from .plan import RunId, RunPlan


@dataclass
class Run:
    """One scored run: its plan's identity, one record per query, and the attention arrays saved per query."""

    id: RunId
    records: list[RunRecord] = field(default_factory=list)
    # "<query id>" (layers, heads, demos, 5), "<id>/profile"
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    selector_fit: dict | None = None  # what the selector fitted on the pool, reported in run_info.json

    @property
    def correct(self) -> np.ndarray:
        return np.array([r.correct for r in self.records], dtype=bool)


def assemble_runs(plans: list[RunPlan], answers: list[list[LabelScores]], task: str, queries: list[Example],
                  calibrated: bool) -> list[Run]:
    """One Run per plan from the scorer's answers to `plan.score_requests` (same order)."""
    answers_left = iter(answers)
    runs = []
    for plan in plans:
        scored = next(answers_left)
        content_free = next(answers_left) if plan.calibration_prompts is not None else None
        runs.append(assemble_run(plan, scored, content_free, task, queries, calibrated))
    return runs


def assemble_run(plan: RunPlan, scored: list[LabelScores], content_free: list[LabelScores] | None, task: str,
                 queries: list[Example], calibrated: bool) -> Run:
    """The run's records (and attention arrays when captured), one per query in query order."""
    run = Run(plan.id, selector_fit=plan.selector_fit)
    log_probs = np.array([s.log_probs for s in scored])  # (queries, labels)
    final = calibrate(log_probs, np.array([s.log_probs for s in content_free])) if content_free else log_probs
    rows = zip(queries, plan.selections, plan.prompts, scored, log_probs, final, plan.demo_labels,
               plan.encoder_similarities)
    for q, selection, prompt, s, lp, fl, labels, sims in rows:
        record = new_record(plan, task, q, selection, prompt, lp, fl, labels, sims, calibrated)
        if s.attention is not None:
            record.attention = keep_attention(run, q.id, s.attention, prompt)
        run.records.append(record)
    return run


def new_record(plan: RunPlan, task: str, q: Example, selection: Selection, prompt: Prompt, log_probs: np.ndarray,
               final: np.ndarray, demo_labels: list[int], similarities: list[float], calibrated: bool) -> RunRecord:
    """The record of one query: what was shown and what the model said (`final`: calibrated log-probs if any)."""
    used = set(prompt.demo_ids)
    raw = int(np.argmax(log_probs))
    return RunRecord(
        task=task, selector=plan.id.label, seed=plan.id.seed, k=plan.id.k, label_format=plan.id.label_format,
        pool=plan.id.pool, run=plan.id.name, query_id=q.id, query_text=q.text, gold=q.label,
        prediction=int(np.argmax(final)), correct=bool(np.argmax(final) == q.label), raw_prediction=raw,
        raw_correct=raw == q.label,
        label_log_probs=[float(v) for v in log_probs], demo_ids=prompt.demo_ids, demo_labels=demo_labels,
        # 6 decimals, as encoder_similarities: float32 scores hold about 7 digits, and the other 10 of a float's repr
        # only cost the records (and their archive) space
        demo_scores=[round(float(v), 6) for i, v in zip(selection.demo_ids, selection.scores) if i in used],
        demo_score_kind=plan.score_kind, encoder_similarities=similarities,
        n_demos_requested=prompt.n_demos_requested, n_demos_used=prompt.n_demos_used, dropped_ids=prompt.dropped_ids,
        prompt_tokens=len(prompt.token_ids), preamble_span=prompt.preamble_span, x_spans=prompt.x_spans,
        y_spans=prompt.y_spans, query_span=prompt.query_span,
        calibrated_log_probs=[float(v) for v in final] if calibrated else None)


def keep_attention(run: Run, query_id: int, row: np.ndarray, prompt: Prompt) -> AttentionDigest:
    """Save the query's attention summary, profile and preamble mass in the run; return their digest."""
    spans = list(zip(prompt.x_spans, prompt.y_spans))
    summary = demo_attention_summary(row, spans)  # (L, H, demos, 5)
    preamble = span_attention_mass(row, prompt.preamble_span)  # (L, H)
    run.attention[str(query_id)] = summary
    run.attention[f"{query_id}/profile"] = demo_attention_profile(row, spans, prompt.query_span[0])
    run.attention[f"{query_id}/preamble"] = preamble
    mean = summary.astype(np.float32).mean(axis=(0, 1))  # (demos, 5)
    return AttentionDigest(preamble_mass=round(float(preamble.astype(np.float32).mean()), 6),
                           x_mass=[round(float(v), 6) for v in mean[:, 0]],
                           y_mass=[round(float(v), 6) for v in mean[:, 1]])


def summarise(runs: Sequence[Run]) -> tuple[list[dict], list[dict]]:
    """Accuracy with a 95% bootstrap CI per run, and McNemar of every other selector against random, paired by query."""
    return [summary_row(run) for run in runs], mcnemar_vs_random(runs)


def summary_row(run: Run) -> dict[str, Any]:
    """One run's accuracy, CI and mean similarity of its demonstrations; with attention captured, the mean attention
    on the labels and on the preamble too."""
    correct = run.correct
    lo, hi = bootstrap_ci(correct, seed=run.id.seed)
    sims = [np.mean(r.encoder_similarities) for r in run.records if r.encoder_similarities]
    i = run.id
    row = {"run": i.name, "selector": i.label, "pool": i.pool, "k": i.k, "label_format": i.label_format, "seed": i.seed,
           "n": int(correct.size), "accuracy": float(correct.mean()), "ci_low": lo, "ci_high": hi,
           "mean_similarity": _mean(sims)}
    digests = [r.attention for r in run.records if r.attention is not None]
    if digests:
        row |= {"label_attention": _mean([sum(d.y_mass) for d in digests]),
                "preamble_attention": _mean([d.preamble_mass for d in digests])}
    return row


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def mcnemar_vs_random(runs: Sequence[Run]) -> list[dict]:
    """Each non-random run against the random runs of its condition; a seeded run only against its own seed."""
    tests = []
    for run in (r for r in runs if r.id.label != "random"):
        seeded = len({r.id.seed for r in runs if r.id.label == run.id.label}) > 1
        for base in (b for b in runs if b.id.label == "random" and b.id.condition == run.id.condition):
            if seeded and base.id.seed != run.id.seed:
                continue
            m = mcnemar(run.correct, base.correct)
            tests.append({"comparison": f"{run.id.name} vs {base.id.name}", "n": int(run.correct.size),
                          "accuracy_diff": float(run.correct.mean() - base.correct.mean()),
                          "only_a_right": m["a_only"], "only_b_right": m["b_only"], "p_value": m["p_value"]})
    return tests
