"""Compare selectors on one task: select, prompt, score, record one line per query, summarise with CIs and McNemar."""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .encoders import DEFAULT_ENCODER
from .errors import RiclError
from .index import DemoIndex
from .lm_encoder import make_encoder
from .models import DEFAULT_MODEL
from .prompts import PromptBuilder
from .selectors import make_selector
from .stats import bootstrap_ci, mcnemar
from .perturb import perturb_examples
from .tasks import Example, TaskSpec, fingerprint, load_examples, load_task, sample_examples, task_from_columns
from .yaml_config import read_yaml, validation_message

log = logging.getLogger(__name__)


class SelectorConfig(BaseModel):
    """A selector by registered name, its parameters, and the label its results go under."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    encoder: str | None = None  # its own index over the same pool, e.g. an LM kernel "lm:smollm2-135m:layer=15"

    @property
    def run_label(self) -> str:
        return self.label or self.name


class PoolConfig(BaseModel):
    """Where demonstrations come from: the task's pool, a perturbed copy of it, or another task with the same labels."""

    model_config = ConfigDict(extra="forbid")
    name: str = "in_distribution"
    perturb: Literal["typos", "rare_words", "shuffle"] | None = None
    rate: float = Field(0.3, ge=0.0, le=1.0)
    task: str | None = None  # another corpus; its label names must equal the task's
    split: str | None = None


class ColumnsConfig(BaseModel):
    """A user's own files without a task YAML: which columns hold the text(s) and the label, and the label names."""

    model_config = ConfigDict(extra="forbid")
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_field: str = "label"
    label_names: list[str] = Field(min_length=2)


class CompareConfig(BaseModel):
    """Everything `ricl compare` needs; saved, resolved, next to every result."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None  # a task name or task YAML; or give `columns` and file paths as the splits
    columns: ColumnsConfig | None = None
    data_dir: str | None = None  # a folder laid out like ../shared/data; None reads the Hugging Face hub
    pool_split: str | None = None  # default: the task's
    query_split: str | None = None
    pool_size: int | None = Field(None, gt=0)  # a seeded subsample of the pool
    n_queries: int | None = Field(None, gt=0)  # a seeded subset of the query split
    query_seed: int = 0
    k: int = Field(8, gt=0)
    k_values: list[int] | None = None  # a sweep of k; replaces k when given
    selectors: list[SelectorConfig] = Field(default_factory=lambda: [SelectorConfig(name="random"), SelectorConfig(name="knn")])
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    model: str = DEFAULT_MODEL
    encoder: str = DEFAULT_ENCODER
    index_type: Literal["flat", "ivf", "hnsw"] = "flat"
    index_root: str = "indexes"  # each pool's index is saved as <index_root>/<task>-<split>-<pool fingerprint>
    pools: list[PoolConfig] = Field(default_factory=lambda: [PoolConfig()], min_length=1)
    label_format: str = "default"
    label_formats: list[str] | None = None  # several label formats on the same selections; replaces label_format
    calibrate: bool = False
    capture_attention: bool = True
    batch_size: int = Field(8, gt=0)
    max_prompt_tokens: int | None = Field(None, gt=0)  # default: the model's context length
    device: str | None = None
    dtype: str = "auto"
    output_dir: str = "results/compare"

    @model_validator(mode="after")
    def _unique_labels(self) -> "CompareConfig":
        if (self.task is None) == (self.columns is None):
            raise ValueError("give either `task` (a name or YAML path) or `columns` (with file paths as the splits)")
        if self.columns is not None and not (self.pool_split and self.query_split):
            raise ValueError("with `columns`, pool_split and query_split must be the paths of your JSONL/CSV files")
        labels = [s.run_label for s in self.selectors]
        if len(set(labels)) != len(labels):
            raise ValueError(f"selector labels must be unique, got {labels}; give each a `label`")
        for sel in self.selectors:
            make_selector(sel.name, **sel.params)  # an unknown name or parameter fails here, before any work
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        if self.k_values is not None and (not self.k_values or min(self.k_values) <= 0):
            raise ValueError(f"k_values must be positive integers, got {self.k_values}")
        return self

    @property
    def ks(self) -> list[int]:
        return self.k_values or [self.k]

    @property
    def formats(self) -> list[str]:
        return self.label_formats or [self.label_format]


def load_compare_config(path: str | Path, **overrides: Any) -> CompareConfig:
    """A CompareConfig from YAML (validated, never executed), with CLI overrides applied."""
    path = Path(path)
    data = read_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CompareConfig(**data)
    except ValidationError as e:
        raise RiclError(validation_message(path, e))


@dataclass
class Pool:
    """One demonstration pool of a comparison and its index."""

    config: PoolConfig
    task_name: str
    split: str
    examples: list[Example]


@dataclass
class Inputs:
    """The task, the queries and the demonstration pools one comparison runs on."""

    task: TaskSpec
    queries: list[Example]
    query_split: str
    pools: list[Pool]

    @property
    def pool(self) -> list[Example]:
        return self.pools[0].examples

    @property
    def pool_split(self) -> str:
        return self.pools[0].split


def load_pool(pool: PoolConfig, config: CompareConfig, task: TaskSpec) -> Pool:
    """The pool's examples: subsampled, from another corpus with the same labels, or perturbed, as configured."""
    source = load_task(pool.task) if pool.task else task
    if source.label_names != task.label_names:
        raise RiclError(f"pool {pool.name!r}: task {source.name} has labels {source.label_names}, "
                        f"expected the same labels as {task.name} ({task.label_names})")
    if len(source.text_fields) != len(task.text_fields):
        raise RiclError(f"pool {pool.name!r}: task {source.name} has {len(source.text_fields)} text fields, "
                        f"{task.name} has {len(task.text_fields)}")
    split = pool.split or (config.pool_split if pool.task is None else None) or source.pool_split
    examples = sample_examples(load_examples(source, split, config.data_dir), config.pool_size, config.query_seed)
    if pool.perturb:
        examples = perturb_examples(examples, pool.perturb, pool.rate, config.query_seed)
    return Pool(pool, source.name, split, examples)


def resolve_task(config: CompareConfig) -> TaskSpec:
    """The task by name or YAML, or one made from the user's columns."""
    if config.columns is None:
        return load_task(config.task)
    c = config.columns
    return task_from_columns(c.text_fields, c.label_field, c.label_names, name=Path(config.pool_split).stem)


def load_inputs(config: CompareConfig) -> Inputs:
    task = resolve_task(config)
    query_split = config.query_split or task.query_split
    queries = sample_examples(load_examples(task, query_split, config.data_dir), config.n_queries, config.query_seed)
    return Inputs(task, queries, query_split, [load_pool(p, config, task) for p in config.pools])


def get_index(config: CompareConfig, pool: Pool, task: TaskSpec, encoder_name: str) -> DemoIndex:
    """Load the pool's index if it was built before (checked against encoder and pool), else build and save it."""
    fp = fingerprint(pool.examples)
    tag = "" if encoder_name == config.encoder else "-" + hashlib.sha256(encoder_name.encode()).hexdigest()[:8]
    directory = (Path(config.index_root) /
                 f"{pool.task_name}-{Path(pool.split).stem}-{pool.config.perturb or 'orig'}-{fp}{tag}")
    encoder = make_encoder(encoder_name)
    if directory.exists():
        index = DemoIndex.load(directory, encoder=encoder)
        if index.manifest.dataset_fingerprint != fp:
            raise RiclError(f"index at {directory} holds another pool (fingerprint {index.manifest.dataset_fingerprint}, "
                            f"expected {fp}); remove it")
        log.info("loaded index %s (%d examples)", directory, len(index))
        return index
    index = DemoIndex(encoder, index_type=config.index_type)
    index.build(pool.examples, dataset_fingerprint=fp, task=task.name, label_names=task.label_names,
                text_fields=task.text_fields, show_progress=True)
    index.save(directory)
    log.info("built index %s (%d examples)", directory, len(index))
    return index


@dataclass
class Run:
    """One selector at one seed, k, label format and pool."""

    label: str
    seed: int
    k: int = 8
    label_format: str = "default"
    pool: str = "in_distribution"
    name: str = ""
    records: list[dict] = field(default_factory=list)
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # "<query id>" (layers, heads, demos, 5), "<id>/profile"

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.label}-seed{self.seed}"

    @property
    def condition(self) -> tuple[int, str, str]:
        """What a selector is compared under: runs pair with random runs of the same condition."""
        return self.k, self.label_format, self.pool

    @property
    def correct(self) -> np.ndarray:
        return np.array([r["correct"] for r in self.records], dtype=bool)


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


def execute_selection(sel: SelectorConfig, seed: int, k: int, pool: Pool, config: CompareConfig, inputs: Inputs,
                      indexes: dict[str, DemoIndex], runner: "LMRunner") -> list[Run]:
    """Select once, then build prompts and score the labels under every label format: one Run per format."""
    index = indexes[sel.encoder or config.encoder]
    selector = make_selector(sel.name, **{**sel.params, "seed": seed}).fit(index)
    selections = selector.select(inputs.queries, k)
    runs = []
    for fmt in config.formats:
        name = run_name(config, sel.run_label, seed, k, fmt, pool.config.name)
        run = Run(sel.run_label, seed, k, fmt, pool.config.name, name)
        builder = PromptBuilder(inputs.task, fmt, runner.tokenizer,
                                max_tokens=min(config.max_prompt_tokens or runner.context_length, runner.context_length))
        runs.append(score_run(run, selections, config, inputs, indexes[config.encoder], runner, builder,
                              sel.encoder or config.encoder))
    return runs


def score_run(run: Run, selections: list, config: CompareConfig, inputs: Inputs, index: DemoIndex,
              runner: "LMRunner", builder: PromptBuilder, score_encoder: str | None = None) -> Run:
    """Build prompts for the selections, score the labels (and calibrate), and fill the run's records.

    `index` is the pool under the experiment's sentence encoder: every record's encoder_similarities come from it,
    whatever kernel the selector used (its own similarities stay in demo_scores, named by demo_score_kind).
    """
    from .capture import demo_attention_profile, demo_attention_summary, span_attention_mass

    continuations = runner.label_continuations(builder.label_words, inputs.task.template.label_prefix)
    builder.check_label_tokens(continuations)
    reserve = max(len(c) for c in continuations)
    prompts = [builder.build([index.example(i) for i in s.demo_ids], q.texts, s.scores, reserve)
               for q, s in zip(inputs.queries, selections)]
    scored = runner.score([p.token_ids for p in prompts], continuations, capture_attention=config.capture_attention,
                          show_progress=True)
    log_probs = np.array([s.log_probs for s in scored])  # (queries, labels)
    final = log_probs
    if config.calibrate:
        final = calibrate_run(inputs, index, selections, builder, runner, continuations, reserve, log_probs)
    similarities = encoder_similarities(index, inputs.queries, prompts)
    score_kind = f"cosine:{score_encoder or config.encoder}"
    for q, sel_, p, s, lp, fl, sims in zip(inputs.queries, selections, prompts, scored, log_probs, final, similarities):
        used = set(p.demo_ids)
        raw = int(np.argmax(lp))
        record = {
            "task": inputs.task.name, "selector": run.label, "seed": run.seed, "k": run.k,
            "label_format": run.label_format, "pool": run.pool, "run": run.name, "query_id": q.id,
            "query_text": q.text, "gold": q.label, "prediction": int(np.argmax(fl)), "correct": bool(np.argmax(fl) == q.label),
            "raw_prediction": raw, "raw_correct": raw == q.label, "label_log_probs": [float(v) for v in lp],
            "demo_ids": p.demo_ids, "demo_labels": [index.example(i).label for i in p.demo_ids],
            "demo_scores": [float(v) for i, v in zip(sel_.demo_ids, sel_.scores) if i in used],
            "demo_score_kind": score_kind, "encoder_similarities": sims,
            "n_demos_requested": p.n_demos_requested, "n_demos_used": p.n_demos_used, "dropped_ids": p.dropped_ids,
            "prompt_tokens": len(p.token_ids), "preamble_span": p.preamble_span, "x_spans": p.x_spans,
            "y_spans": p.y_spans, "query_span": p.query_span,
        }
        if config.calibrate:
            record["calibrated_log_probs"] = [float(v) for v in fl]
        if s.attention is not None:
            spans = list(zip(p.x_spans, p.y_spans))
            summary = demo_attention_summary(s.attention, spans)  # (L, H, demos, 5)
            preamble = span_attention_mass(s.attention, p.preamble_span)  # (L, H)
            run.attention[str(q.id)] = summary
            run.attention[f"{q.id}/profile"] = demo_attention_profile(s.attention, spans, p.query_span[0])
            run.attention[f"{q.id}/preamble"] = preamble
            record["attention"] = attention_digest(summary, preamble)
        run.records.append(record)
    return run


def encoder_similarities(index: DemoIndex, queries: list[Example], prompts: list) -> list[list[float]]:
    """Cosine of each query to each demonstration its prompt holds, under the index's (the experiment's) encoder."""
    embeddings = index.encoder.encode([q.text for q in queries])  # (Q, d), unit rows
    return [[round(float(v), 6) for v in index.embeddings(p.demo_ids) @ e] if p.demo_ids else []
            for p, e in zip(prompts, embeddings)]


def attention_digest(summary: np.ndarray, preamble: np.ndarray) -> dict[str, Any]:
    """The preamble's attention mass and, per demonstration, the x and y mass, averaged over layers and heads (the
    full arrays are saved apart)."""
    mean = summary.astype(np.float32).mean(axis=(0, 1))  # (demos, 5)
    return {"preamble_mass": round(float(preamble.astype(np.float32).mean()), 6),
            "x_mass": [round(float(v), 6) for v in mean[:, 0]], "y_mass": [round(float(v), 6) for v in mean[:, 1]]}


def calibrate_run(inputs: Inputs, index: DemoIndex, selections, builder: PromptBuilder, runner, continuations,
                  reserve: int, log_probs: np.ndarray) -> np.ndarray:
    """Contextual calibration: score each query's prompt with a content-free input ("N/A") and divide it out."""
    from .runner import calibrate

    content_free = ["N/A"] * len(inputs.task.text_fields)
    prompts = [builder.build([index.example(i) for i in s.demo_ids], content_free, s.scores, reserve) for s in selections]
    cf = np.array([s.log_probs for s in runner.score([p.token_ids for p in prompts], continuations)])
    return calibrate(log_probs, cf)


def summarise(runs: list[Run]) -> tuple[list[dict], list[dict]]:
    """Accuracy with a 95% bootstrap CI per run, and McNemar of every other selector against random, paired by query."""
    rows = []
    for run in runs:
        correct = run.correct
        lo, hi = bootstrap_ci(correct, seed=run.seed)
        sims = [np.mean(r["encoder_similarities"]) for r in run.records if r["encoder_similarities"]]
        label_mass = [sum(r["attention"]["y_mass"]) for r in run.records if "attention" in r]
        sink_mass = [r["attention"]["preamble_mass"] for r in run.records if "attention" in r]
        rows.append({"run": run.name, "selector": run.label, "pool": run.pool, "k": run.k, "label_format": run.label_format,
                     "seed": run.seed, "n": int(correct.size), "accuracy": float(correct.mean()), "ci_low": lo,
                     "ci_high": hi, "mean_similarity": float(np.mean(sims)) if sims else float("nan"),
                     "label_attention": float(np.mean(label_mass)) if label_mass else float("nan"),
                     "preamble_attention": float(np.mean(sink_mass)) if sink_mass else float("nan")})
    return rows, mcnemar_vs_random(runs)


def mcnemar_vs_random(runs: list[Run]) -> list[dict]:
    """Each non-random run against the random runs of its condition; a seeded run only against its own seed."""
    tests = []
    for run in (r for r in runs if r.label != "random"):
        seeded = len({r.seed for r in runs if r.label == run.label}) > 1
        for base in (b for b in runs if b.label == "random" and b.condition == run.condition):
            if seeded and base.seed != run.seed:
                continue
            m = mcnemar(run.correct, base.correct)
            tests.append({"comparison": f"{run.name} vs {base.name}", "n": int(run.correct.size),
                          "accuracy_diff": float(run.correct.mean() - base.correct.mean()),
                          "only_a_right": m["a_only"], "only_b_right": m["b_only"], "p_value": m["p_value"]})
    return tests


def package_versions() -> dict[str, str]:
    names = ["retrieval-icl", "torch", "transformers", "sentence-transformers", "faiss-cpu", "numpy", "scipy", "datasets"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with path.open("w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def write_results(output_dir: Path, config: CompareConfig, inputs: Inputs, runs: list[Run], info: dict,
                  rows: list[dict], tests: list[dict]) -> None:
    """Write every file into a temporary sibling, then move it into place: a failed run leaves nothing half-written."""
    from safetensors.numpy import save_file

    tmp = output_dir.with_name(f".{output_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "attention").mkdir(parents=True)
    with (tmp / "records.jsonl").open("w") as f:
        for run in runs:
            for record in run.records:
                f.write(json.dumps(record) + "\n")
    for run in runs:
        if run.attention:
            save_file(run.attention, str(tmp / "attention" / f"{run.name}.safetensors"))
    resolved = config.model_dump() | {"pool_split": inputs.pool_split, "query_split": inputs.query_split}
    (tmp / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    pools = {p.config.name: {"task": p.task_name, "split": p.split, "size": len(p.examples),
                             "fingerprint": fingerprint(p.examples)} for p in inputs.pools}
    info = info | {"versions": package_versions(), "pools": pools, "query_fingerprint": fingerprint(inputs.queries),
                   "n_queries": len(inputs.queries)}
    (tmp / "run_info.json").write_text(json.dumps(info, indent=2))
    write_csv(tmp / "summary.csv", rows)
    write_csv(tmp / "mcnemar.csv", tests)
    (tmp / "summary.md").write_text(summary_markdown(config, inputs, rows, tests, info))
    if output_dir.exists():
        shutil.rmtree(output_dir)
    tmp.rename(output_dir)


def summary_markdown(config: CompareConfig, inputs: Inputs, rows: list[dict], tests: list[dict], info: dict) -> str:
    head = (f"# {inputs.task.name}: {', '.join(s.run_label for s in config.selectors)} (k={', '.join(map(str, config.ks))})\n\n"
            f"Model `{config.model}`, encoder `{config.encoder}`, pools "
            f"{', '.join(f'{p.config.name} ({p.task_name} {p.split}, {len(p.examples)})' for p in inputs.pools)}, "
            f"queries {inputs.query_split} ({len(inputs.queries)}), label formats {config.formats}, "
            f"calibrated: {config.calibrate}. Wall time {info['wall_seconds']:.0f} s, peak memory {info['peak_rss_mb']:.0f} MB.\n\n")
    body = "## Accuracy (95% bootstrap CI)\n\n" + markdown_table(rows)
    if tests:
        body += "\n## Paired McNemar tests (exact)\n\n" + markdown_table(tests)
    return head + body


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_compare(config: CompareConfig, overwrite: bool = False) -> tuple[list[dict], list[dict], Path]:
    """Run every pool x k x (selector, seed) x label format on the same queries and write the results directory."""
    from .runner import LMRunner

    output_dir = check_output_dir(config, overwrite)
    start = time.perf_counter()
    inputs = prepare_inputs(config)
    indexes, timings = build_indexes(config, inputs)
    t = time.perf_counter()
    runner = LMRunner(config.model, batch_size=config.batch_size, device=config.device, dtype=config.dtype).load()
    timings["model_load"] = time.perf_counter() - t
    runs = run_all(config, inputs, indexes, runner, timings)
    return finish_compare(output_dir, config, inputs, runs, start, timings)


def check_output_dir(config: CompareConfig, overwrite: bool) -> Path:
    """The results directory, refused when it exists and overwrite is off."""
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not overwrite:
        raise RiclError(f"{output_dir} exists; pass --overwrite or choose another output_dir")
    return output_dir


def prepare_inputs(config: CompareConfig) -> Inputs:
    """Task, pools and queries, with the label formats and k checked before anything expensive runs."""
    inputs = load_inputs(config)
    for fmt in config.formats:
        inputs.task.label_words(fmt)  # fail early on an unknown label format
    for pool in inputs.pools:
        if max(config.ks) > len(pool.examples):
            raise RiclError(f"k={max(config.ks)} is larger than pool {pool.config.name!r} ({len(pool.examples)} examples)")
    return inputs


def compare_encoders(config: CompareConfig) -> list[str]:
    """The experiment's encoder first, then every other encoder a selector asks for."""
    return [config.encoder] + sorted({s.encoder for s in config.selectors if s.encoder} - {config.encoder})


def build_indexes(config: CompareConfig, inputs: Inputs) -> tuple[list[dict[str, DemoIndex]], dict[str, float]]:
    """One index per pool and encoder (loaded when saved under index_root), and the time it took."""
    t = time.perf_counter()
    indexes = [{e: get_index(config, pool, inputs.task, e) for e in compare_encoders(config)} for pool in inputs.pools]
    return indexes, {"index": time.perf_counter() - t}


def run_all(config: CompareConfig, inputs: Inputs, indexes: list[dict[str, DemoIndex]], runner: Any,
            timings: dict[str, float]) -> list[Run]:
    """Every pool x k x (selector, seed) x label format, in a fixed order; seconds per query go into timings."""
    runs: list[Run] = []
    for pool, by_encoder in zip(inputs.pools, indexes):
        for k in config.ks:
            for sel, seed in planned_runs(config):
                t = time.perf_counter()
                log.info("running %s seed %d k %d pool %s on %d queries", sel.run_label, seed, k, pool.config.name,
                         len(inputs.queries))
                new = execute_selection(sel, seed, k, pool, config, inputs, by_encoder, runner)
                timings.update({f"run:{r.name}": (time.perf_counter() - t) / len(new) for r in new})
                runs.extend(new)
    return runs


def finish_compare(output_dir: Path, config: CompareConfig, inputs: Inputs, runs: list[Run], start: float,
                   timings: dict[str, float], **info: Any) -> tuple[list[dict], list[dict], Path]:
    """Summarise the runs and write the results directory; `info` adds fields to run_info.json."""
    info = {"wall_seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "timings": timings, **info}
    rows, tests = summarise(runs)
    write_results(output_dir, config, inputs, runs, info, rows, tests)
    return rows, tests, output_dir
