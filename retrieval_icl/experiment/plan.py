"""Plan a comparison: config + inputs + indexes -> every run's selections and prompts, ready to score. No model runs
here; only the scorer's tokenizer and context length are read.

    plans = plan_compare(config, inputs, indexes, scorer)   # one RunPlan per pool x k x (selector, seed) x format
    requests = score_requests(plans, config)               # what to score, in plan order (scored by any Scorer)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.examples import Example
from ..data.tasks import TaskSpec, read_examples_file
from ..errors import RiclError
from ..lm.prompts import Prompt, PromptBuilder
from ..lm.scoring import Scorer, ScoreRequest, log_normalise
from ..retrieval.index import DemoIndex
from ..selectors.base import LabelProbs, Selection, Selector, make_selector
from ..serving.prompt_budget import index_task, index_text_fields
from .compare_config import CompareConfig, SelectorConfig
from .inputs import Inputs

CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al. 2021)


@dataclass(frozen=True)
class RunId:
    """Which run: a selector (its label) at one seed, k, label format and pool, and the run's name in the results.
    A plan and the run assembled from it share it."""

    label: str
    seed: int
    k: int = 8
    label_format: str = "default"
    pool: str = "in_distribution"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.label}-seed{self.seed}")

    @property
    def condition(self) -> tuple[int, str, str]:
        """What a selector is compared under: runs pair with random runs of the same condition."""
        return self.k, self.label_format, self.pool


@dataclass
class RunPlan:
    """One run's plan: its queries' selections and prompts."""

    id: RunId
    selections: list[Selection]
    continuations: list[list[int]]  # token ids of each label, as scored
    score_kind: str  # what the selections' scores are, e.g. "cosine:<encoder>"
    prompts: list[Prompt] = field(default_factory=list)
    demo_labels: list[list[int]] = field(default_factory=list)  # per prompt, each demonstration's label
    encoder_similarities: list[list[float]] = field(default_factory=list)  # per prompt, cosine to each demonstration
    calibration_prompts: list[Prompt] | None = None  # content-free inputs with the same demonstrations
    selector_fit: dict | None = None  # what the selector fitted on the pool (Selector.fit_report), for run_info.json


def run_name(config: CompareConfig, label: str, seed: int, k: int, label_format: str, pool: str) -> str:
    """The selector label, then only the conditions that vary in this experiment, then the seed."""
    parts = [label]
    parts += [f"k{k}"] if len(config.ks) > 1 else []
    parts += [label_format] if len(config.formats) > 1 else []
    parts += [pool] if len(config.pools) > 1 else []
    return "-".join(parts + [f"seed{seed}"])


def planned_runs(config: CompareConfig) -> list[tuple[int, SelectorConfig, int]]:
    """(k, selector, seed) in run order: each k of the sweep with the selectors in config order; a selector with its
    own k runs once, in the first k's turn; a selector the seed cannot change runs under the first seed only."""
    plan = []
    for n, k in enumerate(config.ks):
        for sel in config.selectors:
            if sel.k is not None and n > 0:
                continue
            probe = make_selector(sel.name, **sel.params)
            seeds = config.seeds if probe.uses_seed else config.seeds[:1]
            plan.extend((sel.k or k, sel, s) for s in seeds)
    return plan


def plan_compare(config: CompareConfig, inputs: Inputs, indexes: list[dict[str, DemoIndex]],
                 scorer: Scorer) -> list[RunPlan]:
    """Every pool x k x (selector, seed) x label format, in a fixed order; `indexes` holds one {encoder: index} per
    pool. Each selection is made once and written under every label format. Selectors that use the LM (mdl scores
    its candidates, adaptive with fit_on=lm fits its thresholds) get it here: the only model use in planning."""
    context = min(config.max_prompt_tokens or scorer.context_length, scorer.context_length)
    builders = [PromptBuilder(inputs.task, fmt, scorer.tokenizer, context_length=context) for fmt in config.formats]
    continuations = [label_tokens(builder, inputs, scorer) for builder in builders]
    query_vectors = indexes[0][config.encoder].encoder.encode([q.text for q in inputs.queries])  # (Q, d) unit rows
    plans: list[RunPlan] = []
    for pool, by_encoder in zip(inputs.pools, indexes):
        for k, sel, seed in planned_runs(config):
            encoder = sel.encoder or config.encoder
            selector = make_selector(sel.name, **{**sel.params, "seed": seed})
            if selector.uses_lm:  # mdl scores candidates, adaptive(fit_on=lm) fits to the LM's answers
                selector.use_lm(lm_label_probs(builders[0], continuations[0], scorer, by_encoder[encoder]),
                                model=config.model)
            if sel.calibration == "folds":  # set by config validation only for a selector that calibrates
                selections, fit = cross_fitted(selector, by_encoder[encoder], inputs.queries, k, sel.calibration_folds)
            else:
                selector.fit(by_encoder[encoder])
                selections, fit = selector.select(inputs.queries, k), selector.fit_report()
            for builder, conts in zip(builders, continuations):
                name = run_name(config, sel.run_label, seed, k, builder.label_format, pool.config.name)
                run_id = RunId(sel.run_label, seed, k, builder.label_format, pool.config.name, name)
                plan = RunPlan(run_id, selections, conts, f"cosine:{encoder}", selector_fit=fit)
                plans.append(fill_prompts(plan, config, inputs, by_encoder[config.encoder], query_vectors, builder,
                                          sel.max_tokens))
    return plans


def cross_fitted(selector: Selector, index: DemoIndex, queries: Sequence[Example], k: int,
                 folds: int) -> tuple[list[Selection], dict]:
    """Selections for the queries, each fold's made by the selector calibrated on the other folds' queries only (the
    folds drawn with the selector's seed), and the folds' fit reports. A fold's fit never stays in the index, so
    neither another fold nor another run reuses it."""
    if len(queries) < folds:
        raise RiclError(f"adaptive calibrates on the run's own queries in calibration_folds={folds} folds, which needs "
                        f"at least {folds} queries, got {len(queries)}: give fewer folds or `calibration: pool`")
    fold_of = np.random.default_rng(selector.seed).permutation(len(queries)) % folds
    selections: list[Selection | None] = [None] * len(queries)
    reports, fits = [], dict(index.fits)
    for fold in range(folds):
        inside, outside = np.flatnonzero(fold_of == fold), np.flatnonzero(fold_of != fold)
        selector.use_calibration([queries[i] for i in outside]).fit(index)
        for i, selection in zip(inside, selector.select([queries[i] for i in inside], k)):
            selections[i] = selection
        reports.append({"fold": fold, "query_ids": [queries[i].id for i in inside], **selector.fit_report()})
        index.fits = dict(fits)
    return selections, {"calibration_folds": folds, "folds": reports}


def lm_label_probs(builder: PromptBuilder, continuations: list[list[int]], scorer: Scorer,
                   index: DemoIndex) -> LabelProbs:
    """Label probabilities of prompts rendered as the run renders them, for mdl's candidate selections and adaptive's
    LM fit. Each (text, demonstrations) is scored once: a cross-fitted fit asks for a query again in every fold it
    calibrates."""
    reserve, n_fields = max(len(c) for c in continuations), len(builder.task.text_fields)
    scored: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def label_probs(texts: Sequence[str], demo_ids: Sequence[Sequence[int]]) -> np.ndarray:
        asked = [(t, tuple(int(i) for i in ids)) for t, ids in zip(texts, demo_ids)]
        new = [key for key in dict.fromkeys(asked) if key not in scored]
        # A query's text is its fields joined by newlines (Example.text); the prompt renders them one by one.
        prompts = [builder.build([index.example(i) for i in ids], t.split("\n", n_fields - 1), reserve=reserve)
                   for t, ids in new]
        if prompts:
            rows = scorer.score([p.token_ids for p in prompts], continuations)
            scored.update(zip(new, np.exp(log_normalise(np.array([r.log_probs for r in rows])))))
        return np.array([scored[key] for key in asked])

    return label_probs


def with_index_lm(selector: Selector, index: DemoIndex, model: str | None) -> Selector:
    """The selector, given the LM `model` to score with when it uses one (adaptive fit_on=lm); as it is otherwise."""
    if model is not None and selector.uses_lm:
        from ..lm.runner import LMRunner

        selector.use_lm(index_label_probs(index, LMRunner(model).load()), model=model)
    return selector


def index_label_probs(index: DemoIndex, scorer: Scorer) -> LabelProbs:
    """Label probabilities under `scorer` of prompts rendered as `ricl compare` renders them for the index's own task
    (default label format), for a fit that asks the LM outside a comparison (`ricl index fit --model`)."""
    task = own_task(index)
    builder = PromptBuilder(task, "default", scorer.tokenizer, context_length=scorer.context_length)
    continuations = scorer.label_continuations(builder.label_words, task.template.label_prefix)
    builder.check_label_tokens(continuations)
    return lm_label_probs(builder, continuations, scorer, index)


def index_queries(index: DemoIndex, path: Path, label_field: str | None = None) -> list[Example]:
    """A user's own labelled queries from a JSONL/CSV/Parquet file in the text fields of the index's task, the label
    in `label_field` (default: the task's)."""
    task = own_task(index)
    return read_examples_file(path, task.model_copy(update={"label_field": label_field}) if label_field else task)


def own_task(index: DemoIndex) -> TaskSpec:
    """The task that renders the index's examples (`index_task` on its manifest)."""
    m = index.manifest
    return index_task(m.task, index_text_fields(index), m.label_names, max(ex.label for ex in index.examples) + 1)


def label_tokens(builder: PromptBuilder, inputs: Inputs, scorer: Scorer) -> list[list[int]]:
    """The scored tokens of each label under the builder's label format, checked against a demonstration's."""
    continuations = scorer.label_continuations(builder.label_words, inputs.task.template.label_prefix)
    builder.check_label_tokens(continuations)
    return continuations


def fill_prompts(plan: RunPlan, config: CompareConfig, inputs: Inputs, index: DemoIndex, query_vectors: np.ndarray,
                 builder: PromptBuilder, budget: int | None = None) -> RunPlan:
    """The plan's prompts (and content-free prompts when calibrating), demo labels and encoder similarities.

    `budget` keeps each query's most relevant demonstrations that fit that many prompt tokens (PromptBuilder.build); a
    query with no room for one gets none (its record says n_demos 0) rather than ending the run.
    `index` is the pool under the experiment's sentence encoder and `query_vectors` (Q, d) the queries under it:
    every record's encoder_similarities come from them, whatever kernel the selector used (its own similarities
    stay in demo_scores, named by demo_score_kind).
    """
    reserve = max(len(c) for c in plan.continuations)
    plan.prompts = [builder.build(demos(index, s), q.texts, s.scores, reserve, budget=budget,
                                  none_fit_ok=True)
                    for q, s in zip(inputs.queries, plan.selections)]
    plan.demo_labels = [[index.example(i).label for i in p.demo_ids] for p in plan.prompts]
    plan.encoder_similarities = [[round(float(v), 6) for v in index.embeddings(p.demo_ids) @ e] if p.demo_ids else []
                                 for p, e in zip(plan.prompts, query_vectors)]
    if config.calibrate:
        content_free = [CONTENT_FREE] * len(inputs.task.text_fields)
        # The demonstrations each prompt kept (a budget or the context may have dropped some), nothing more.
        plan.calibration_prompts = [builder.build([index.example(i) for i in p.demo_ids], content_free, None, reserve)
                                    for p in plan.prompts]
    return plan


def demos(index: DemoIndex, selection: Selection) -> list[Example]:
    """A selection's demonstrations, in prompt order."""
    return [index.example(i) for i in selection.demo_ids]


def score_requests(plans: list[RunPlan], config: CompareConfig) -> list[ScoreRequest]:
    """Per plan, its prompts (with attention when configured), then its content-free prompts when calibrating."""
    requests = []
    for plan in plans:
        requests.append(ScoreRequest([p.token_ids for p in plan.prompts], plan.continuations,
                                     config.capture_attention, show_progress=True))
        if plan.calibration_prompts is not None:
            requests.append(ScoreRequest([p.token_ids for p in plan.calibration_prompts], plan.continuations))
    return requests
