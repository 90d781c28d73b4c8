"""Where the package caches what it derives once (converted models, ONNX exports, embeddings): one root for all."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """`$RICL_CACHE_DIR/<kind>`, else `~/.cache/retrieval_icl/<kind>` (kind: models, onnx, embeddings)."""
    base = os.environ.get("RICL_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "retrieval_icl") / kind
