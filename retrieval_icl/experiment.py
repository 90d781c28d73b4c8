"""Compare selectors on one task: select, prompt, score, record one line per query, summarise with CIs and McNemar."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .compare_config import (ColumnsConfig, CompareConfig, Inputs, Pool, PoolConfig, SelectorConfig, get_index,
                             load_compare_config, load_inputs)
from .errors import RiclError
from .index import DemoIndex
from .prompts import PromptBuilder
from .selectors import make_selector
from .stats import bootstrap_ci, mcnemar
from .tasks import Example, fingerprint

log = logging.getLogger(__name__)

__all__ = ["ColumnsConfig", "CompareConfig", "PoolConfig", "SelectorConfig", "load_compare_config", "run_compare"]


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
