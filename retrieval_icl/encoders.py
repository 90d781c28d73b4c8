"""Encoders by name: `make_encoder` is the one factory, above both kinds of encoder it builds.

A sentence-transformers name or path gives a `sentence_encoder.Encoder`; `lm:MODEL[:layer=N][:pooling=P]` gives an
`lm_encoder.LMEncoder`, imported (with torch) only when such a name is asked for.
"""

from __future__ import annotations

from .errors import RiclError
from .sentence_encoder import (
    BACKENDS,
    DEFAULT_ENCODER,
    LM_PREFIX,
    EmbeddingCache,
    Encoder,
    canonical_name,
    check_backend,
    default_cache_dir,
)

__all__ = ["BACKENDS", "DEFAULT_ENCODER", "LM_PREFIX", "EmbeddingCache", "Encoder", "canonical_name",
           "check_backend", "check_encoder_backend", "default_cache_dir", "make_encoder"]


def check_encoder_backend(name: str, backend: str) -> None:
    """RiclError unless `backend` is one of BACKENDS and can run the encoder `name` (LM encoders run on torch only)."""
    check_backend(backend)
    if name.startswith(LM_PREFIX) and backend != "torch":
        raise RiclError(f"encoder backend {backend!r} is for sentence-transformers encoders, but {name!r} is an "
                        f"LM encoder; use backend 'torch' (an LM encoder's precision is its `dtype`)")


def make_encoder(name: str, backend: str = "torch", **kwargs) -> Encoder:
    """The encoder a name stands for: an LMEncoder for `lm:MODEL[:layer=N][:pooling=P]`, else a sentence-transformers
    Encoder running on `backend` (one of BACKENDS). Nothing is loaded (torch included) until the first `encode` or
    `load`."""
    check_encoder_backend(name, backend)
    if name.startswith(LM_PREFIX):
        from .lm_encoder import LMEncoder

        model, layer, pooling = LMEncoder.parse(name)
        return LMEncoder(model, layer=layer, pooling=pooling, **kwargs)
    return Encoder(name, backend=backend, **kwargs)
