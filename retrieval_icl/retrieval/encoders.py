"""Encoders by name: `make_encoder` is the one factory, above both kinds of encoder it builds.

A sentence-transformers name or path gives a `sentence_encoder.Encoder`; `lm:MODEL[:layer=N][:pooling=P]` gives an
`lm_encoder.LMEncoder`, imported (with torch) only when such a name is asked for.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RiclError
from .sentence_encoder import LM_PREFIX, Encoder, check_backend, packaged_encoder_path


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


def manifest_encoder(name: str, backend: str, where: str) -> Encoder:
    """The encoder an index's manifest names, made only from a hub id, an `lm:` kernel (transformers runs no code of
    a folder without trust_remote_code) or the packaged encoder. A local folder named by the file alone is refused:
    sentence-transformers imports the Python modules a folder lists, so a tampered manifest could run code."""
    folder = Path(name).expanduser()
    packaged = packaged_encoder_path()
    local = not name.startswith(LM_PREFIX) and (folder.is_absolute() or folder.exists())
    if local and not (packaged is not None and folder.exists() and folder.resolve() == packaged.resolve()):
        raise RiclError(f"{where}: the manifest names the local encoder folder {name}; an index's files alone may not "
                        f"choose code to load. If you trust that folder, pass it yourself: --encoder {name} (or "
                        "encoder=Encoder(...) in Python)")
    return make_encoder(name, backend=backend)
