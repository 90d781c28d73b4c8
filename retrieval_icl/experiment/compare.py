"""`ricl compare`: selectors compared on one task, the flow only. Load the inputs and indexes, then plan (plan.py),
score (any Scorer), assemble (assemble.py), and hand the runs to results_dir.py, which writes the results directory
atomically."""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic_dir import claimed
from ..errors import RiclError
from ..lm.scoring import Scorer
from ..results_dir import check_output_dir, write_results
from ..retrieval.index import DemoIndex
from .assemble import Run, assemble_runs, summarise
from .compare_config import CompareConfig
from .inputs import Inputs, get_index, load_inputs
from .plan import plan_compare, score_requests

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_compare(config: CompareConfig, overwrite: bool = False, scorer: Scorer | None = None,
                warm: Callable[[Inputs], None] | None = None, **info: Any) -> tuple[list[dict], list[dict], Path]:
    """Run every pool x k x (selector, seed) x label format on the same queries and write the results directory:
    plan (selections and prompts), score (any Scorer; default an LMRunner of config.model), assemble (records).
    `warm(inputs)` runs before the indexes are built (Ray fills the embedding cache there); `info` goes into
    run_info.json.
    """
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir, overwrite)
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
        from ..lm.runner import LMRunner

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
            "dtype_reason": runner.loaded.dtype_reason, "batch_rows": limits.rows, "batch_tokens": limits.tokens}


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
    fits = {run.id.name: run.selector_fit for run in runs if run.selector_fit}
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
