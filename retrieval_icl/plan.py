"""Plan a comparison: config + inputs + indexes -> every run's selections and prompts, ready to score. No model runs
here; only the scorer's tokenizer and context length are read.

    plans = plan_compare(config, inputs, indexes, scorer)   # one RunPlan per pool x k x (selector, seed) x format
    requests = score_requests(plans, config)               # what to score, in plan order (scored by any Scorer)
"""

from __future__ import annotations

from dataclasses import dataclass

from .compare_config import CompareConfig, Inputs, Pool, SelectorConfig
from .index import DemoIndex
from .prompts import Prompt, PromptBuilder
from .scoring import Scorer, ScoreRequest
from .selectors import Selection, make_selector
from .tasks import Example

CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al. 2021)


@dataclass
class RunPlan:
    """One run (a selector at one seed, k, label format and pool): its queries' selections and prompts."""

    label: str
    seed: int
    k: int
    label_format: str
    pool: str
    name: str
    selections: list[Selection]
    prompts: list[Prompt]
    continuations: list[list[int]]  # token ids of each label, as scored
    demo_labels: list[list[int]]  # per prompt, the label of each demonstration it holds
    encoder_similarities: list[list[float]]  # per prompt, cosine to each demonstration under the experiment's encoder
    score_kind: str  # what the selections' scores are, e.g. "cosine:<encoder>"
    calibration_prompts: list[Prompt] | None = None  # content-free inputs with the same demonstrations

    @property
    def condition(self) -> tuple[int, str, str]:
        """What a selector is compared under: runs pair with random runs of the same condition."""
        return self.k, self.label_format, self.pool


def run_name(config: CompareConfig, label: str, seed: int, k: int, label_format: str, pool: str) -> str:
    """The selector label, then only the conditions that vary in this experiment, then the seed."""
    parts = [label]
    parts += [f"k{k}"] if len(config.ks) > 1 else []
    parts += [label_format] if len(config.formats) > 1 else []
    parts += [pool] if len(config.pools) > 1 else []
    return "-".join(parts + [f"seed{seed}"])


def planned_runs(config: CompareConfig) -> list[tuple[SelectorConfig, int]]:
    """(selector, seed) pairs; a selector the seed cannot change runs once, under the first seed."""
    plan = []
    for sel in config.selectors:
        probe = make_selector(sel.name, **sel.params)
        seeds = config.seeds if probe.uses_seed else config.seeds[:1]
        plan.extend((sel, s) for s in seeds)
    return plan


def plan_compare(config: CompareConfig, inputs: Inputs, indexes: list[dict[str, DemoIndex]],
                 scorer: Scorer) -> list[RunPlan]:
    """Every pool x k x (selector, seed) x label format, in a fixed order; `indexes` holds one {encoder: index} per
    pool."""
    plans: list[RunPlan] = []
    for pool, by_encoder in zip(inputs.pools, indexes):
        for k in config.ks:
            for sel, seed in planned_runs(config):
                plans.extend(plan_selection(sel, seed, k, pool, config, inputs, by_encoder, scorer))
    return plans


def plan_selection(sel: SelectorConfig, seed: int, k: int, pool: Pool, config: CompareConfig, inputs: Inputs,
                   indexes: dict[str, DemoIndex], scorer: Scorer) -> list[RunPlan]:
    """Select once, then build the prompts under every label format: one RunPlan per format."""
    encoder = sel.encoder or config.encoder
    selector = make_selector(sel.name, **{**sel.params, "seed": seed}).fit(indexes[encoder])
    selections = selector.select(inputs.queries, k)
    max_tokens = min(config.max_prompt_tokens or scorer.context_length, scorer.context_length)
    plans = []
    for fmt in config.formats:
        builder = PromptBuilder(inputs.task, fmt, scorer.tokenizer, max_tokens=max_tokens)
        name = run_name(config, sel.run_label, seed, k, fmt, pool.config.name)
        plans.append(plan_run(RunPlan(sel.run_label, seed, k, fmt, pool.config.name, name, selections, [], [], [], [],
                                      f"cosine:{encoder}"), config, inputs, indexes[config.encoder], scorer, builder))
    return plans


def plan_run(plan: RunPlan, config: CompareConfig, inputs: Inputs, index: DemoIndex, scorer: Scorer,
             builder: PromptBuilder) -> RunPlan:
    """Fill the plan's prompts (and content-free prompts when calibrating) for its selections.

    `index` is the pool under the experiment's sentence encoder: every record's encoder_similarities come from it,
    whatever kernel the selector used (its own similarities stay in demo_scores, named by demo_score_kind).
    """
    plan.continuations = scorer.label_continuations(builder.label_words, inputs.task.template.label_prefix)
    builder.check_label_tokens(plan.continuations)
    reserve = max(len(c) for c in plan.continuations)
    plan.prompts = [builder.build(demos(index, s), q.texts, s.scores, reserve)
                    for q, s in zip(inputs.queries, plan.selections)]
    plan.demo_labels = [[index.example(i).label for i in p.demo_ids] for p in plan.prompts]
    plan.encoder_similarities = encoder_similarities(index, inputs.queries, plan.prompts)
    if config.calibrate:
        content_free = [CONTENT_FREE] * len(inputs.task.text_fields)
        plan.calibration_prompts = [builder.build(demos(index, s), content_free, s.scores, reserve)
                                    for s in plan.selections]
    return plan


def demos(index: DemoIndex, selection: Selection) -> list[Example]:
    """A selection's demonstrations, in prompt order."""
    return [index.example(i) for i in selection.demo_ids]


def encoder_similarities(index: DemoIndex, queries: list[Example], prompts: list[Prompt]) -> list[list[float]]:
    """Cosine of each query to each demonstration its prompt holds, under the index's (the experiment's) encoder."""
    embeddings = index.encoder.encode([q.text for q in queries])  # (Q, d), unit rows
    return [[round(float(v), 6) for v in index.embeddings(p.demo_ids) @ e] if p.demo_ids else []
            for p, e in zip(prompts, embeddings)]


def score_requests(plans: list[RunPlan], config: CompareConfig) -> list[ScoreRequest]:
    """Per plan, its prompts (with attention when configured), then its content-free prompts when calibrating."""
    requests = []
    for plan in plans:
        requests.append(ScoreRequest([p.token_ids for p in plan.prompts], plan.continuations,
                                     config.capture_attention, show_progress=True))
        if plan.calibration_prompts is not None:
            requests.append(ScoreRequest([p.token_ids for p in plan.calibration_prompts], plan.continuations))
    return requests
