"""The index of a task's examples: embedded (here or on Ray workers), built with the task's metadata, saved; or
loaded again when it was saved before. The CLI, experiments and the Ray path all build indexes through here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..atomic_dir import recover
from ..data.examples import Example, fingerprint
from ..data.tasks import TaskSpec
from ..errors import RiclError
from ..retrieval.encoders import make_encoder
from ..retrieval.index import DemoIndex
from ..retrieval.sentence_encoder import DEFAULT_ENCODER, LM_PREFIX

log = logging.getLogger(__name__)


def build_task_index(examples: Sequence[Example], task: TaskSpec, encoder: str = DEFAULT_ENCODER,
                     index_type: str = "flat", directory: str | Path | None = None, ray_workers: int | None = None,
                     show_progress: bool = True, **encoder_kwargs: object) -> DemoIndex:
    """Embed the examples, build their index (manifest: fingerprint, task, label names, text fields) and save it to
    `directory` when given; `ray_workers` embeds on that many Ray workers (the saved index is the same).
    `encoder_kwargs` go to `make_encoder` here and on the workers (e.g. cache_dir, backend)."""
    meta = {"dataset_fingerprint": fingerprint(examples), "task": task.name, "label_names": task.label_names,
            "text_fields": task.text_fields}
    embeddings = None
    if ray_workers is not None:
        from .scale import embed_distributed

        embeddings = embed_distributed([ex.text for ex in examples], encoder, ray_workers, **encoder_kwargs)
    index = DemoIndex(make_encoder(encoder, **encoder_kwargs), index_type=index_type)
    if embeddings is not None and not encoder.startswith(LM_PREFIX):
        index.encoder.load()  # its fingerprint goes into the manifest, as when it embeds here (an LM stays unloaded)
    index.build(examples, embeddings=embeddings, show_progress=show_progress, **meta)
    if directory is not None:
        index.save(directory)
    return index


def load_or_build_index(directory: Path, examples: Sequence[Example], task: TaskSpec, encoder: str,
                        index_type: str = "flat", backend: str = "torch") -> DemoIndex:
    """The index saved at `directory` (checked to hold these examples and this encoder and backend), else a new one
    built and saved there."""
    recover(directory)  # an index lost between a save's two renames is restored, not rebuilt without its adds
    if directory.exists():
        index = DemoIndex.load(directory, encoder=make_encoder(encoder, backend=backend))
        expected = fingerprint(examples)
        if index.manifest.dataset_fingerprint != expected:
            raise RiclError(f"index at {directory} holds another pool (fingerprint "
                            f"{index.manifest.dataset_fingerprint}, expected {expected}); remove it")
        log.info("loaded index %s (%d examples)", directory, len(index))
        return index
    index = build_task_index(examples, task, encoder, index_type, directory, backend=backend)
    log.info("built index %s (%d examples)", directory, len(index))
    return index
