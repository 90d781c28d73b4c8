"""`ricl compare`: selectors compared on one task. Load the inputs and indexes, then plan (plan.py), score (any
Scorer), assemble (assemble.py), and write the results directory atomically."""

from __future__ import annotations

import json
import logging
import resource
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import yaml

from .assemble import Run, assemble_runs, summarise
from .atomic_dir import atomic_directory, check_replaceable, claimed
from .compare_config import (
    ColumnsConfig,
    CompareConfig,
    PoolConfig,
    SelectorConfig,
    load_compare_config,
)
from .errors import RiclError
from .examples import fingerprint
from .index import DemoIndex
from .inputs import Inputs, get_index, load_inputs
from .plan import plan_compare, score_requests
from .scoring import Scorer

log = logging.getLogger(__name__)
RUN_INFO = "run_info.json"  # every results directory has it: the mark that --overwrite may replace it

__all__ = ["ColumnsConfig", "CompareConfig", "PoolConfig", "SelectorConfig", "load_compare_config", "run_compare"]


def package_versions() -> dict[str, str]:
    names = ["retrieval-icl", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu", "numpy",
             "scipy", "datasets"]  # one of the two faiss builds is installed (the cpu or gpu extra)
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
    """Write every file into a temporary sibling, then swap it in: a failed run leaves nothing half-written and
    the previous results whole."""
    with atomic_directory(output_dir, marker=RUN_INFO) as tmp:
        write_files(tmp, config, inputs, runs, info, rows, tests)


def write_files(tmp: Path, config: CompareConfig, inputs: Inputs, runs: list[Run], info: dict, rows: list[dict],
                tests: list[dict]) -> None:
    """Every file of a results directory, written into `tmp`."""
    from safetensors.numpy import save_file

    (tmp / "attention").mkdir()
    with (tmp / "records.jsonl").open("w") as f:
        for run in runs:
            for record in run.records:
                f.write(record.to_json() + "\n")
    for run in runs:
        if run.attention:
            save_file(run.attention, str(tmp / "attention" / f"{run.name}.safetensors"))
    resolved = config.model_dump() | {"pool_split": inputs.pool_split, "query_split": inputs.query_split}
    (tmp / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    pools = {p.config.name: {"task": p.task_name, "split": p.split, "size": len(p.examples),
                             "fingerprint": fingerprint(p.examples)} for p in inputs.pools}
    info = info | {"versions": package_versions(), "pools": pools, "query_fingerprint": fingerprint(inputs.queries),
                   "n_queries": len(inputs.queries)}
    (tmp / RUN_INFO).write_text(json.dumps(info, indent=2))
    write_csv(tmp / "summary.csv", rows)
    write_csv(tmp / "mcnemar.csv", tests)
    (tmp / "summary.md").write_text(summary_markdown(config, inputs, rows, tests, info))


def summary_markdown(config: CompareConfig, inputs: Inputs, rows: list[dict], tests: list[dict], info: dict) -> str:
    head = (f"# {inputs.task.name}: {', '.join(s.run_label for s in config.selectors)} "
            f"(k={', '.join(map(str, config.ks))})\n\n"
            f"Model `{config.model}`, encoder `{config.encoder}`, pools "
            f"{', '.join(f'{p.config.name} ({p.task_name} {p.split}, {len(p.examples)})' for p in inputs.pools)}, "
            f"queries {inputs.query_split} ({len(inputs.queries)}), label formats {config.formats}, "
            f"calibrated: {config.calibrate}. Wall time {info['wall_seconds']:.0f} s, "
            f"peak memory {info['peak_rss_mb']:.0f} MB.\n\n")
    body = "## Accuracy (95% bootstrap CI)\n\n" + markdown_table(rows)
    if tests:
        body += "\n## Paired McNemar tests (exact)\n\n" + markdown_table(tests)
    return head + body


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_compare(config: CompareConfig, overwrite: bool = False, scorer: Scorer | None = None,
                warm: Callable[[Inputs], None] | None = None, **info: Any) -> tuple[list[dict], list[dict], Path]:
    """Run every pool x k x (selector, seed) x label format on the same queries and write the results directory:
    plan (selections and prompts), score (any Scorer; default an LMRunner of config.model), assemble (records).
    `warm(inputs)` runs before the indexes are built (Ray fills the embedding cache there); `info` goes into
    run_info.json.
    """
    output_dir = check_output_dir(config, overwrite)
    with claimed(output_dir):  # held until the results are swapped in: a second run to the directory is refused
        return compare_into(output_dir, config, scorer, warm, **info)


def compare_into(output_dir: Path, config: CompareConfig, scorer: Scorer | None,
                 warm: Callable[[Inputs], None] | None, **info: Any) -> tuple[list[dict], list[dict], Path]:
    """run_compare's work once output_dir is claimed."""
    start = time.perf_counter()
    inputs = prepare_inputs(config)
    if warm is not None:
        warm(inputs)
    indexes, timings = build_indexes(config, inputs)
    if scorer is None:
        from .runner import LMRunner

        t = time.perf_counter()
        scorer = LMRunner(config.model, batch_size=config.batch_size, device=config.device, dtype=config.dtype,
                          max_batch_tokens=config.max_batch_tokens).load()
        timings["model_load"] = time.perf_counter() - t
    loaded = getattr(scorer, "loaded", None)  # a local LMRunner; Ray workers and stand-ins hold no model here
    if getattr(loaded, "model", None) is not None:
        info.setdefault("model", model_info(scorer, config.capture_attention))
    runs = plan_score_assemble(config, inputs, indexes, scorer, timings)
    return finish_compare(output_dir, config, inputs, runs, start, timings, **info)


def plan_score_assemble(config: CompareConfig, inputs: Inputs, indexes: list[dict[str, DemoIndex]], scorer: Scorer,
                        timings: dict[str, float]) -> list[Run]:
    """The three steps, each once over the whole comparison; their seconds go into timings."""
    t = time.perf_counter()
    plans = plan_compare(config, inputs, indexes, scorer)
    timings["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    answers = scorer.score_many(score_requests(plans, config))
    timings["score"] = time.perf_counter() - t
    t = time.perf_counter()
    runs = assemble_runs(plans, answers, inputs.task.name, inputs.queries, config.calibrate)
    timings["assemble"] = time.perf_counter() - t
    return runs


def model_info(runner: Any, capture: bool) -> dict[str, Any]:
    """The device and dtype the model's weights ran in and the batch limits it scored with (the config may say
    'auto' and leave the limits to the device)."""
    weight = next(runner.loaded.model.parameters())
    limits = runner.batch_limits(capture)
    return {"device": str(weight.device), "dtype": str(weight.dtype).removeprefix("torch."),
            "batch_rows": limits.rows, "batch_tokens": limits.tokens}


def check_output_dir(config: CompareConfig, overwrite: bool) -> Path:
    """The results directory, refused when it exists and overwrite is off, and (overwrite on) when it is not one
    this project wrote."""
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not overwrite:
        raise RiclError(f"{output_dir} exists; pass --overwrite or choose another output_dir")
    check_replaceable(output_dir, RUN_INFO)
    return output_dir


def prepare_inputs(config: CompareConfig) -> Inputs:
    """Task, pools and queries, with the label formats and k checked before anything expensive runs."""
    inputs = load_inputs(config)
    for fmt in config.formats:
        inputs.task.label_words(fmt)  # fail early on an unknown label format
    for pool in inputs.pools:
        if max(config.ks) > len(pool.examples):
            raise RiclError(f"k={max(config.ks)} is larger than pool {pool.config.name!r} "
                            f"({len(pool.examples)} examples)")
    return inputs


def compare_encoders(config: CompareConfig) -> list[str]:
    """The experiment's encoder first, then every other encoder a selector asks for."""
    return [config.encoder] + sorted({s.encoder for s in config.selectors if s.encoder} - {config.encoder})


def build_indexes(config: CompareConfig, inputs: Inputs) -> tuple[list[dict[str, DemoIndex]], dict[str, float]]:
    """One index per pool and encoder (loaded when saved under index_root), and the time it took."""
    t = time.perf_counter()
    indexes = [{e: get_index(config, pool, inputs.task, e) for e in compare_encoders(config)} for pool in inputs.pools]
    return indexes, {"index": time.perf_counter() - t}


def finish_compare(output_dir: Path, config: CompareConfig, inputs: Inputs, runs: list[Run], start: float,
                   timings: dict[str, float], **info: Any) -> tuple[list[dict], list[dict], Path]:
    """Summarise the runs and write the results directory; `info` adds fields to run_info.json."""
    info = {"wall_seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "timings": timings, **info}
    fits = {run.name: run.selector_fit for run in runs if run.selector_fit}
    if fits:
        info["selector_fits"] = fits  # e.g. adaptive's bandwidth and thresholds, fitted on pool queries
    rows, tests = summarise(runs)
    write_results(output_dir, config, inputs, runs, info, rows, tests)
    return rows, tests, output_dir


def run_compare_distributed(config: CompareConfig, n_workers: int = 2, overwrite: bool = False, num_gpus: float = 0,
                            rows_per_call: int = 32) -> tuple[list[dict], list[dict], Path]:
    """`ricl compare` with embeddings and label scoring on Ray workers (scale.py); writes the same results directory.

    Pool and query texts are embedded on the workers into the driver's embedding cache first, so indexes and
    selections are then built on the driver exactly as in `run_compare`, from the same vectors; then the same
    plan, score (a RayRunner: one Ray job per label set) and assemble steps run once each.
    """
    from .scale import RayRunner, warm_embedding_cache

    def warm(inputs: Inputs) -> None:
        texts = [ex.text for pool in inputs.pools for ex in pool.examples] + [q.text for q in inputs.queries]
        for name in compare_encoders(config):
            warm_embedding_cache(texts, name, n_workers, num_gpus=num_gpus, backend=config.encoder_backend)

    runner = RayRunner(config.model, config.batch_size, config.device, config.dtype, n_workers, rows_per_call,
                       num_gpus, config.max_batch_tokens).load()
    return run_compare(config, overwrite, runner, warm, ray_workers=n_workers)
