"""The sentence encoder on ONNX Runtime ("onnx" backend): a SentenceTransformer exported once to ONNX (the whole
pipeline: transformer, pooling and any dense layers) and run in float32, in batches cut to pad little.

Exports are cached under `$RICL_CACHE_DIR/onnx` (else ~/.cache/retrieval_icl/onnx), one folder per model files and
library versions, written atomically. Needs the `onnx` extra (onnxruntime, onnx).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..atomic_dir import atomic_directory
from ..cache_dirs import cache_dir
from ..errors import RiclError
from ..lm.batching import batch_bounds

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

_OPSET = 17
# A batch's fixed cost (one ONNX Runtime call, Python around it) in padded tokens' worth of compute, for batch_bounds.
_BATCH_OVERHEAD_TOKENS = 8


def _require_runtime() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise RiclError(f"the onnx encoder backend needs onnxruntime and onnx ({e}); install them with "
                        f"pip install -e \".[onnx]\" (scripts/install.sh does)") from e


def _pipeline(st: "SentenceTransformer", names: list[str]) -> "torch.nn.Module":
    """The SentenceTransformer as a module of tensors, so torch.onnx can trace it: token tensors -> embedding."""
    import torch

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.st(dict(zip(names, tensors)))["sentence_embedding"]

    return Pipeline().eval()


class OnnxSentenceModel:
    """The part of the SentenceTransformer API `Encoder` calls (`encode`, `get_embedding_dimension`), on ONNX
    Runtime; tokenisation stays the SentenceTransformer's own."""

    def __init__(self, st: "SentenceTransformer", session: "onnxruntime.InferenceSession", path: Path) -> None:
        self.st = st
        self.session = session
        self.path = path
        self.input_names = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, st: "SentenceTransformer", source: str, fingerprint: str = "") -> "OnnxSentenceModel":
        """The export of `st` (loaded from `source`), exporting it first if it is not cached."""
        _require_runtime()
        import onnxruntime as ort
        import torch

        path = export(st, source, fingerprint)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads torch was allowed
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(st, session, path)

    def get_embedding_dimension(self) -> int:
        return int(self.st.get_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 64, **_: object) -> np.ndarray:
        """(n, d) float32 unit rows, in the order of `texts`. Tokenised once; rows sorted by token count and cut
        into batches of at most `batch_size` that pad little (batching.batch_bounds)."""

        features = {name: value.numpy() for name, value in self.st.preprocess(list(texts)).items()
                    if name in self.input_names}
        lengths = features["attention_mask"].sum(1)
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        for start, end in batch_bounds(lengths[order].tolist(), batch_size, _BATCH_OVERHEAD_TOKENS):
            rows = order[start:end]
            width = int(lengths[rows[0]])
            columns = slice(None, width) if self._pads_right else slice(-width, None)
            out[rows] = self.session.run(None, {n: a[rows][:, columns] for n, a in features.items()})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    @property
    def _pads_right(self) -> bool:
        return getattr(self.st.tokenizer, "padding_side", "right") == "right"


def token_inputs(st: "SentenceTransformer") -> list[str]:
    """Names of the tensors the model's tokenizer gives (input_ids, attention_mask, token_type_ids, ...)."""
    import torch

    return [name for name, value in st.preprocess(["a"]).items() if isinstance(value, torch.Tensor)]


def export_dir(source: str, fingerprint: str = "") -> Path:
    """Cache folder of one export: keyed by the model's source, its files (names, sizes, mtimes), the fingerprint of
    its weights (a hub id's files are not here to list) and versions."""
    import onnxruntime
    import torch

    files = sorted(p for p in Path(source).rglob("*") if p.is_file()) if Path(source).is_dir() else []
    stamp = [source, fingerprint, torch.__version__, onnxruntime.__version__, _OPSET]
    stamp += [(str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]
    return cache_dir("onnx") / f"{Path(source).name}-{key}"


def export(st: "SentenceTransformer", source: str, fingerprint: str = "") -> Path:
    """Path of `model.onnx`, traced from `st` in float32 the first time."""
    target = export_dir(source, fingerprint)
    if (target / "model.onnx").is_file():
        return target / "model.onnx"
    log.info("exporting encoder %s to ONNX under %s (once; later loads read it)", source, target)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_directory(target, marker="model.onnx", wait=True) as tmp:  # a concurrent export: wait for it
            _trace(st, tmp / "model.onnx")
    except OSError:
        if not (target / "model.onnx").is_file():  # another process may have written it first
            raise
    log.info("exported encoder to %s in %.1f s", target, time.perf_counter() - started)
    return target / "model.onnx"


def _trace(st: "SentenceTransformer", path: Path) -> None:
    import torch

    names = token_inputs(st)
    sample = st.preprocess(["a sample sentence to trace", "and a second, longer one to trace with padding"])
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"embedding": {0: "batch"}}
    # The tracer warns about Python conditions it freezes (padding checks that hold for every input); the test
    # suite checks the export against torch on batches of other sizes and lengths.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_pipeline(st.cpu(), names), tuple(sample[n] for n in names), str(path),
                          input_names=names, output_names=["embedding"], dynamic_axes=axes, opset_version=_OPSET,
                          dynamo=False)
