"""What a comparison runs on, loaded from its config: the task, the queries, the demonstration pools and their
indexes (paths named by task, split, perturbation and content)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..data.examples import Example, fingerprint, sample_examples
from ..data.perturb import perturb_examples
from ..data.tasks import TaskSpec, load_examples, load_task, task_from_columns
from ..errors import RiclError
from ..retrieval.index import DemoIndex
from .compare_config import CompareConfig, PoolConfig
from .task_index import load_or_build_index


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
    """The pool's index under `encoder_name` and the config's encoder backend, saved as
    <index_root>/<task>-<split>-<perturbation>-<fingerprint>[-<encoder hash>][-<backend>]: the encoder hash for
    encoders other than the config's, the backend when not torch, so no backend reuses another's index."""
    tag = "" if encoder_name == config.encoder else "-" + hashlib.sha256(encoder_name.encode()).hexdigest()[:8]
    tag += "" if config.encoder_backend == "torch" else f"-{config.encoder_backend}"
    name = f"{pool.task_name}-{Path(pool.split).stem}-{pool.config.perturb or 'orig'}-{fingerprint(pool.examples)}"
    directory = Path(config.index_root) / (name + tag)
    return load_or_build_index(directory, pool.examples, task, encoder_name, config.index_type,
                               config.encoder_backend)
