"""DemoIndex: a FAISS index over a demonstration pool, with its examples table and manifest, saved atomically."""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from .. import __version__
from ..atomic_dir import atomic_directory, recover, write_text
from ..data.examples import Example, fingerprint
from ..errors import RiclError, StaleIndexError
from .encoders import manifest_encoder
from .faiss_support import faiss  # the one import of faiss: a missing build gets an install hint
from .sentence_encoder import Encoder

INDEX_TYPES = ("flat", "ivf", "hnsw")
INDEX_FILE, EXAMPLES_FILE, MANIFEST_FILE = "index.faiss", "examples.jsonl", "manifest.json"


class IndexManifest(BaseModel):
    """What a saved index was built from and with: enough to refuse a wrong encoder or a stale pool."""

    encoder: str
    encoder_backend: str = "torch"  # how the pool was embedded (sentence_encoder.BACKENDS); older manifests: torch
    dimension: int = Field(gt=0)
    metric: str = "inner_product"
    index_type: Literal["flat", "ivf", "hnsw"]
    count: int = Field(ge=0)
    dataset_fingerprint: str
    task: str | None = None
    text_fields: list[str] | None = None
    label_names: list[str] | None = None
    created: str
    versions: dict[str, str]
    params: dict
    fits: dict[str, dict] = Field(default_factory=dict)  # selectors' fitted state, by selector name (adaptive)
    encoder_fingerprint: str | None = None  # Encoder.fingerprint of the weights that embedded the pool
    generation: int = 0  # saves so far: a writer whose loaded generation is not the one on disk is refused
    index_bytes: int | None = None  # size of index.faiss, checked before FAISS reads it (older manifests: none)


def _versions() -> dict[str, str]:
    try:  # read the version without importing sentence_transformers (slow), which a search does not need
        st = metadata.version("sentence-transformers")
    except metadata.PackageNotFoundError:
        st = "not installed"
    return {"retrieval_icl": __version__, "faiss": faiss.__version__, "numpy": np.__version__,
            "sentence_transformers": st}


def _unit_rows(x: np.ndarray, what: str, dimension: int | None = None) -> np.ndarray:
    """A float32 C-contiguous (n, d) copy with L2-normalised rows (cosine = inner product)."""
    x = np.array(x, dtype=np.float32, order="C", ndmin=2)  # copies, so callers' arrays are untouched
    if x.ndim != 2:
        raise RiclError(f"{what} must be a 2-D array (n, d), got shape {x.shape}")
    if dimension is not None and x.shape[1] != dimension:
        raise RiclError(f"{what} have dimension {x.shape[1]}, but the index has dimension {dimension}")
    faiss.normalize_L2(x)
    return x


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) IVF lists, capped so k-means sees >= 39 points per list, at least 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


class DemoIndex:
    """Nearest-neighbour search over example embeddings; FAISS row i holds the example with id ids[i]."""

    def __init__(self, encoder: Encoder, index_type: str = "flat", nlist: int | None = None, nprobe: int = 16,
                 hnsw_m: int = 32, ef_search: int = 128) -> None:
        if index_type not in INDEX_TYPES:
            raise RiclError(f"unknown index_type {index_type!r}; expected one of {list(INDEX_TYPES)}")
        for field, value in (("nlist", nlist), ("nprobe", nprobe), ("hnsw_m", hnsw_m), ("ef_search", ef_search)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise RiclError(f"{field} must be a positive integer, got {value!r}")
        self.encoder, self.index_type = encoder, index_type
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search
        self._faiss: faiss.Index | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._row_cache: tuple[np.ndarray, dict[int, int]] | None = None  # (the _ids it maps, id -> row)
        self._examples: dict[int, Example] = {}  # insertion order == FAISS row order
        self._meta: dict = {}
        self.fits: dict[str, dict] = {}  # selectors' fitted state, saved in the manifest (AdaptiveSelector)
        self._encoder_checked = False
        self._source: tuple[Path, int] | None = None  # (directory, generation) this copy was loaded or saved as

    def build(self, examples: Sequence[Example], dataset_fingerprint: str = "", task: str | None = None,
              label_names: list[str] | None = None, text_fields: list[str] | None = None,
              show_progress: bool = False, embeddings: np.ndarray | None = None) -> "DemoIndex":
        """Embed `examples` (or take precomputed `embeddings`, (n, d)) and build the FAISS index; returns self."""
        if len(examples) == 0:
            raise RiclError("cannot build an index from an empty pool; expected at least one example")
        self._check_new_ids(examples, existing=set())
        vectors = self._vectors(examples, embeddings, show_progress, dimension=None)
        if self.encoder.loaded and self.encoder.dimension != vectors.shape[1]:
            raise RiclError(f"embeddings have dimension {vectors.shape[1]}, but encoder {self.encoder.name} "
                            f"produces dimension {self.encoder.dimension}")
        self._faiss, self._encoder_checked = self._new_faiss(vectors), False
        self._ids, self._examples = np.empty(0, dtype=np.int64), {}
        self._append(examples, vectors)
        self.fits = {}
        self._meta = {"dataset_fingerprint": dataset_fingerprint or fingerprint(examples), "task": task,
                      "label_names": label_names, "text_fields": text_fields,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "encoder_fingerprint": self.encoder.fingerprint if self.encoder.loaded else None}
        return self

    def add(self, examples: Sequence[Example], embeddings: np.ndarray | None = None,
            show_progress: bool = False) -> None:
        """Append examples with new ids; the dataset fingerprint is recomputed over the whole pool."""
        faiss_index = self._require_built()
        if len(examples) == 0:
            return
        self._check_new_ids(examples, existing=set(self._examples))
        self._append(examples, self._vectors(examples, embeddings, show_progress, dimension=faiss_index.d))
        self._meta["dataset_fingerprint"] = fingerprint(self.examples)

    def copy(self) -> "DemoIndex":
        """An independent copy, its FAISS index cloned: adding to it leaves this one as it is (the encoder is
        shared)."""
        other = copy.copy(self)
        other._faiss = faiss.clone_index(self._require_built())
        other._ids, other._examples, other._row_cache = self._ids.copy(), dict(self._examples), None
        other._meta, other.fits = dict(self._meta), dict(self.fits)
        return other

    def _check_new_ids(self, examples: Sequence[Example], existing: set[int]) -> None:
        seen = set(existing)
        for ex in examples:
            if ex.id in seen:
                raise RiclError(f"example id {ex.id} is already in the index; ids must be unique")
            seen.add(ex.id)

    def _vectors(self, examples: Sequence[Example], embeddings: np.ndarray | None, show_progress: bool,
                 dimension: int | None) -> np.ndarray:
        """(n, d) unit vectors for `examples`: the given embeddings, or the encoder's."""
        if embeddings is None:
            embeddings = self.loaded_encoder().encode([ex.text for ex in examples], show_progress=show_progress)
        vectors = _unit_rows(embeddings, "embeddings", dimension)
        if len(vectors) != len(examples):
            raise RiclError(f"got {len(vectors)} embeddings for {len(examples)} examples; expected one row per example")
        return vectors

    def _new_faiss(self, vectors: np.ndarray) -> faiss.Index:
        """An empty index of the configured type, trained on `vectors` when it needs training (IVF)."""
        n, d = vectors.shape
        if self.index_type == "flat":
            return faiss.IndexFlatIP(d)
        if self.index_type == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(40, 2 * self.hnsw_m)
            self._configure(index)
            return index
        nlist = self.nlist or default_nlist(n)
        if nlist > n:
            raise RiclError(f"nlist={nlist} needs at least {nlist} training vectors, but the pool has {n}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        self._configure(index)
        return index

    def _configure(self, index: faiss.Index) -> None:
        """Apply search-time parameters, which also must be re-applied after loading."""
        if self.index_type == "ivf":
            index.nprobe = min(self.nprobe, index.nlist)
            index.make_direct_map()  # so embeddings() can reconstruct vectors by row
        elif self.index_type == "hnsw":
            index.hnsw.efSearch = self.ef_search

    def _append(self, examples: Sequence[Example], vectors: np.ndarray) -> None:
        assert self._faiss is not None
        self._faiss.add(vectors)
        self._ids = np.concatenate([self._ids, np.fromiter((ex.id for ex in examples), dtype=np.int64)])
        self._examples.update((ex.id, ex) for ex in examples)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: scores (n, k) float32 and example ids (n, k) int64, padded with -inf / -1."""
        faiss_index = self._require_built()
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise RiclError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(queries)
        if q.ndim == 2 and q.shape[1] != faiss_index.d or q.ndim == 1 and q.shape[0] != faiss_index.d:
            raise RiclError(f"query dimension {q.shape[-1]} does not match the index dimension {faiss_index.d}")
        unit = _unit_rows(q, "queries")
        if isinstance(faiss_index, faiss.IndexFlat):
            scores, rows = _flat_search(faiss_index, unit, int(k))  # (n, k) each
        else:
            scores, rows = faiss_index.search(unit, int(k))
        found = rows >= 0
        ids = np.where(found, self._ids[np.where(found, rows, 0)], -1).astype(np.int64)
        # FAISS pads inner-product scores with -FLT_MAX; -inf cannot be mistaken for a real score.
        return np.where(found, scores, -np.inf).astype(np.float32), ids

    def search_texts(self, texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """search() on the encoder's embeddings of `texts` (loads the encoder if needed)."""
        self._require_built()
        return self.search(self.loaded_encoder().encode(texts), k)

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """The stored unit vectors (n, d) of these example ids."""
        faiss_index = self._require_built()
        row_of = self._row_of()
        missing = [i for i in ids if int(i) not in row_of]
        if missing:
            raise RiclError(f"example ids {missing[:5]} are not in the index")
        rows = np.array([row_of[int(i)] for i in ids], dtype=np.int64)
        return faiss_index.reconstruct_batch(rows) if len(rows) else np.empty((0, faiss_index.d), np.float32)

    def _row_of(self) -> dict[int, int]:
        """Example id -> FAISS row, rebuilt only when the ids change (every change assigns a new `_ids` array)."""
        if self._row_cache is None or self._row_cache[0] is not self._ids:
            self._row_cache = (self._ids, {int(i): row for row, i in enumerate(self._ids)})
        return self._row_cache[1]

    def example(self, id: int) -> Example:
        """The example with this id."""
        if id not in self._examples:
            raise RiclError(f"no example with id {id} in the index ({len(self)} examples)")
        return self._examples[id]

    @property
    def examples(self) -> list[Example]:
        """All examples, in FAISS row order."""
        return list(self._examples.values())

    @property
    def ids(self) -> np.ndarray:
        """Example id of each FAISS row, int64 (n,)."""
        return self._ids.copy()

    def __len__(self) -> int:
        return len(self._ids)

    def _require_built(self) -> faiss.Index:
        if self._faiss is None:
            raise RiclError("the index is empty: call build() with at least one example, or DemoIndex.load()")
        return self._faiss

    def loaded_encoder(self) -> Encoder:
        """The encoder, loaded, and checked once against the dimension the index was built with."""
        self.encoder.load()
        if self._faiss is not None and not self._encoder_checked:
            _check_encoder(self.encoder, self.manifest, "this index")
            self._encoder_checked = True
        return self.encoder

    @property
    def manifest(self) -> IndexManifest:
        """The manifest that save() writes."""
        faiss_index = self._require_built()
        nlist = faiss_index.nlist if self.index_type == "ivf" else self.nlist  # the value used, when defaulted
        params = {"nlist": nlist, "nprobe": self.nprobe, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search}
        return IndexManifest(encoder=self.encoder.name, encoder_backend=self.encoder.backend, dimension=faiss_index.d,
                             index_type=self.index_type, count=len(self), versions=_versions(), params=params,
                             fits=self.fits, generation=self._source[1] if self._source else 0, **self._meta)

    def save(self, directory: str | Path) -> Path:
        """Write index.faiss, examples.jsonl and manifest.json atomically: a crash leaves the old index whole. Saving
        back where it was loaded from is refused (StaleIndexError) when another writer saved there meanwhile."""
        faiss_index, target = self._require_built(), Path(directory)
        with atomic_directory(target, marker=MANIFEST_FILE) as tmp:  # claimed: no other writer until the swap
            on_disk = read_manifest(target / MANIFEST_FILE).generation if (target / MANIFEST_FILE).is_file() else -1
            if self._source and self._source[0] == target.absolute() and self._source[1] != on_disk:
                raise StaleIndexError(f"{target} was saved by another writer (generation {on_disk}) since this copy "
                                      f"was loaded (generation {self._source[1]}); nothing was saved: reload it")
            faiss.write_index(faiss_index, str(tmp / INDEX_FILE))
            write_text(tmp / EXAMPLES_FILE, "".join(example_line(ex) for ex in self.examples))
            manifest = self.manifest.model_copy(update={"generation": on_disk + 1,
                                                        "index_bytes": (tmp / INDEX_FILE).stat().st_size})
            write_text(tmp / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
        self._source = (target.absolute(), on_disk + 1)
        return target

    @classmethod
    def load(cls, directory: str | Path, encoder: Encoder | None = None) -> "DemoIndex":
        """Open a saved index after checking its files agree with each other and with `encoder`; without one, the
        encoder is made from the manifest (name and backend), so queries are embedded the way the pool was."""
        directory = Path(directory)
        recover(directory)  # a save interrupted between its renames, or its temporary folders
        if not directory.is_dir():
            raise RiclError(f"{directory}: no index directory there "
                            f"(expected {INDEX_FILE}, {EXAMPLES_FILE}, {MANIFEST_FILE})")
        for name in (MANIFEST_FILE, INDEX_FILE, EXAMPLES_FILE):
            if not (directory / name).is_file():
                raise RiclError(f"{directory}: missing {name}; not a complete saved index")
        manifest = read_manifest(directory / MANIFEST_FILE)
        if encoder is not None:
            _check_encoder(encoder, manifest, str(directory))
        size = (directory / INDEX_FILE).stat().st_size
        if manifest.index_bytes is not None and size != manifest.index_bytes:
            raise RiclError(f"{directory / INDEX_FILE}: {size} bytes, but the manifest says {manifest.index_bytes}; "
                            "not the file this index saved (rebuild it)")
        faiss_index = _read_faiss(directory / INDEX_FILE)
        examples = _read_examples(directory / EXAMPLES_FILE)
        counts = {"manifest.json count": manifest.count, f"{INDEX_FILE} vectors": faiss_index.ntotal,
                  f"{EXAMPLES_FILE} rows": len(examples)}
        if len(set(counts.values())) != 1 or faiss_index.d != manifest.dimension:
            raise RiclError(f"{directory}: files disagree ({counts}, dimension {faiss_index.d} vs manifest "
                            f"{manifest.dimension}); rebuild the index")
        p = manifest.params
        encoder = encoder or manifest_encoder(manifest.encoder, manifest.encoder_backend, str(directory))
        index = cls(encoder, manifest.index_type, p.get("nlist"), p.get("nprobe", 16), p.get("hnsw_m", 32),
                    p.get("ef_search", 128))
        index._faiss = faiss_index
        index._configure(faiss_index)
        index._ids = np.fromiter((ex.id for ex in examples), dtype=np.int64, count=len(examples))
        index._examples = {ex.id: ex for ex in examples}
        index.fits, index._source = manifest.fits, (directory.absolute(), manifest.generation)
        index._meta = manifest.model_dump(include={"dataset_fingerprint", "task", "label_names", "text_fields",
                                                   "encoder_fingerprint",
                                                   "created"})
        return index


SCORE_BLOCK = 1 << 24  # floats in one (queries, pool) block of exact scores: 64 MB


def _flat_search(index: faiss.IndexFlat, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, one BLAS product per block of queries: scores (n, k), rows (n, k), padded like
    FAISS (-FLT_MAX, -1). FAISS itself scans the pool once per query below 128000 / d queries, memory-bound and
    several times slower (benchmarks/bench_index.py)."""
    n_pool, kk = index.ntotal, min(k, index.ntotal)
    pool = faiss.rev_swig_ptr(index.get_xb(), n_pool * index.d).reshape(n_pool, index.d)  # (N, d), no copy
    scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    step = max(1, SCORE_BLOCK // max(n_pool, 1))
    for start in range(0, len(queries) if kk else 0, step):
        block = queries[start : start + step] @ pool.T  # (b, N)
        if kk < n_pool:
            top = np.argpartition(-block, kk - 1, axis=1)[:, :kk]  # (b, kk), unordered
        else:
            top = np.tile(np.arange(n_pool), (len(block), 1))
        part = np.take_along_axis(block, top, axis=1)  # (b, kk)
        order = np.lexsort((top, -part), axis=1)  # best first; ties by row
        scores[start : start + len(block), :kk] = np.take_along_axis(part, order, axis=1)
        rows[start : start + len(block), :kk] = np.take_along_axis(top, order, axis=1)
    return scores, rows


def _check_encoder(encoder: Encoder, manifest: IndexManifest, where: str) -> None:
    """Refuse an encoder whose name, backend or (once loaded) dimension differs from the one the index was built
    with."""
    dim = encoder.dimension if encoder.loaded else None
    if encoder.name != manifest.encoder or (dim is not None and dim != manifest.dimension):
        shown = f"{encoder.name} (dim {dim})" if dim is not None else encoder.name
        raise RiclError(f"index at {where} was built with encoder {manifest.encoder} (dim {manifest.dimension}); "
                        f"refusing to use it with encoder {shown}")
    if encoder.loaded and manifest.encoder_fingerprint not in (None, encoder.fingerprint):
        raise RiclError(f"index at {where} was embedded by other weights of {manifest.encoder} (fingerprint "
                        f"{manifest.encoder_fingerprint}, now {encoder.fingerprint}); rebuild the index")
    if encoder.backend != manifest.encoder_backend:
        raise RiclError(f"index at {where} was embedded with encoder backend {manifest.encoder_backend!r}; refusing "
                        f"to use it with backend {encoder.backend!r} (expected the same backend, or rebuild the index)")


def example_line(ex: Example) -> str:
    return json.dumps({"id": ex.id, "texts": list(ex.texts), "label": ex.label}, ensure_ascii=False) + "\n"


def read_manifest(path: Path) -> IndexManifest:
    """A manifest.json read and validated; RiclError names the field."""
    try:
        return IndexManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        err = e.errors()[0]
        raise RiclError(f"{path}: field {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}") from e


def _read_faiss(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except Exception as e:  # FAISS raises RuntimeError with C++ text; say which file and what was expected
        raise RiclError(f"{path} is corrupt or not a FAISS index ({str(e).splitlines()[0] if str(e) else e!r})") from e


def _read_examples(path: Path) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                texts = row["texts"]
                if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    raise TypeError
                examples.append(Example(id=int(row["id"]), texts=tuple(texts), label=int(row["label"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise RiclError(f"{path}:{line_no}: expected an object with id (int), texts (list of str), "
                                f"label (int)") from e
    if len({ex.id for ex in examples}) != len(examples):
        raise RiclError(f"{path}: example ids repeat; expected unique ids")
    return examples
