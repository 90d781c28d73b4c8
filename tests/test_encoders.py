"""The packaged all-MiniLM-L6-v2 encoder (offline): shapes, normalisation, similarity, cache; an end-to-end index."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.encoders import make_encoder
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import DEFAULT_ENCODER, PROBE, EmbeddingCache, Encoder

SST2 = Path(__file__).resolve().parent / "data" / "sst2" / "train.jsonl"  # 40 hand-made reviews


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Encoder:
    """Loaded once per module; its cache lives in a fresh temp dir."""
    return Encoder("all-MiniLM-L6-v2", cache_dir=tmp_path_factory.mktemp("cache")).load()


class CountingModel:
    """Wraps the SentenceTransformer to count how many texts reach the model."""

    def __init__(self, model):
        self.model, self.texts = model, 0

    def encode(self, texts, **kwargs):
        self.texts += len(texts) if list(texts) != [PROBE] else 0  # the weights' fingerprint, once
        return self.model.encode(texts, **kwargs)

    def get_embedding_dimension(self):
        return self.model.get_embedding_dimension()


def test_constructor_only_stores_params(monkeypatch, tmp_path):
    monkeypatch.setenv("RICL_CACHE_DIR", str(tmp_path))
    enc = Encoder()
    assert not enc.loaded and enc.name == DEFAULT_ENCODER and enc.cache_dir == tmp_path / "embeddings"
    with pytest.raises(RiclError, match="batch_size must be a positive integer, got 0"):
        Encoder(batch_size=0)
    with pytest.raises(RiclError, match="not loaded"):
        enc.dimension
    assert Encoder("./my/model").name == "./my/model"


def test_unit_norm_float32(encoder):
    emb = encoder.encode(["a first sentence", "another, longer sentence about films", ""])
    assert encoder.name == DEFAULT_ENCODER and encoder.dimension == 384
    assert emb.dtype == np.float32 and emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(RiclError, match="sequence of strings"):
        encoder.encode("one string")


def test_similar_sentences_score_higher(encoder):
    a, b, c = encoder.encode(["The movie was wonderful.", "I loved this film.", "Stock prices fell sharply today."])
    assert a @ b > a @ c + 0.2 and a @ b > b @ c + 0.2


def test_cache_skips_the_model(encoder):
    counter = CountingModel(encoder.load().loaded_model)
    encoder = Encoder(DEFAULT_ENCODER, cache_dir=encoder.cache_dir, loaded_model=counter)
    texts = [f"cache probe sentence number {i}" for i in range(10)] + ["cache probe sentence number 0"]
    first = encoder.encode(texts)
    assert counter.texts == 10  # the repeated text is encoded once
    second = encoder.encode(texts)
    assert counter.texts == 10
    np.testing.assert_array_equal(first, second)
    encoder.encode(texts[:3] + ["one new sentence"])
    assert counter.texts == 11


def test_cache_persists_across_encoders(encoder):
    texts = ["persisted across instances", "and a second one"]
    first = encoder.encode(texts)
    counter = CountingModel(encoder.load().loaded_model)
    fresh = Encoder(DEFAULT_ENCODER, cache_dir=encoder.cache_dir, loaded_model=counter)
    np.testing.assert_array_equal(fresh.encode(texts), first)
    assert counter.texts == 0
    uncached = Encoder(DEFAULT_ENCODER, use_cache=False, loaded_model=counter)
    np.testing.assert_allclose(uncached.encode(texts), first, atol=1e-5)
    assert counter.texts == 2


def test_bfloat16_backend_agrees_and_keeps_its_own_cache(encoder, tmp_path):
    texts = [json.loads(line)["sentence"] for line in SST2.read_text().splitlines()]
    fast = Encoder("all-MiniLM-L6-v2", cache_dir=encoder.cache_dir, backend="bfloat16")
    got, want = fast.encode(texts), encoder.encode(texts)
    assert got.dtype == np.float32 and got.shape == (40, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * want).sum(1)
    assert cosine.min() >= 0.99 and not np.array_equal(got, want)  # close, and really computed in bfloat16
    assert fast._cache().path != encoder._cache().path
    with pytest.raises(RiclError, match="unknown encoder backend 'tflite'"):
        Encoder(backend="tflite")


def _fill_cache(args: tuple[str, int]) -> int:
    path, worker = args
    cache = EmbeddingCache(Path(path), 4)
    for j in range(10):
        key = f"w{worker}-{j}"
        cache.get([key])
        cache.put([key], np.full((1, 4), worker, dtype=np.float32))
    return worker


def test_cache_shared_by_processes_that_open_it_together(tmp_path):
    """Ray workers open one new cache file at the same moment; none may fail with "database is locked"."""
    context = multiprocessing.get_context("fork")
    for trial in range(8):
        path = tmp_path / f"t{trial}" / "embeddings.sqlite"
        with context.Pool(8) as pool:
            pool.map(_fill_cache, [(str(path), w) for w in range(8)])
        stored = EmbeddingCache(path, 4).get([f"w{w}-{j}" for w in range(8) for j in range(10)])
        assert len(stored) == 80
        assert all(vec[0] == int(key[1]) for key, vec in stored.items())


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(RiclError, match="cannot load encoder"):
        Encoder(str(tmp_path / "no-such-model")).load()


def test_end_to_end_index_on_reviews(encoder, tmp_path):
    rows = [json.loads(line) for line in SST2.read_text().splitlines()]
    examples = [Example(id=r["idx"], texts=(r["sentence"],), label=r["label"]) for r in rows]
    idx = DemoIndex(encoder).build(examples, task="sst2", label_names=["negative", "positive"])
    scores, ids = idx.search_texts([examples[17].text, examples[3].text], k=5)
    assert ids[:, 0].tolist() == [examples[17].id, examples[3].id]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    loaded = DemoIndex.load(idx.save(tmp_path / "sst2"))  # encoder recreated from the manifest, loaded lazily
    assert loaded.manifest.encoder == DEFAULT_ENCODER and not loaded.encoder.loaded
    loaded.encoder.cache_dir = encoder.cache_dir
    again, again_ids = loaded.search_texts([examples[17].text], k=5)
    assert again_ids[0].tolist() == ids[0].tolist()


def test_make_encoder_passes_the_backend():
    assert make_encoder("all-MiniLM-L6-v2", backend="bfloat16", use_cache=False).backend == "bfloat16"
    assert make_encoder("all-MiniLM-L6-v2").backend == "torch"
    with pytest.raises(RiclError, match="unknown encoder backend 'tflite'; expected one of \\['torch', 'bfloat16', "
                                        "'onnx'\\]"):
        make_encoder("all-MiniLM-L6-v2", backend="tflite")
    with pytest.raises(RiclError, match="'lm:smollm2-135m:layer=3' is an LM encoder; use backend 'torch'"):
        make_encoder("lm:smollm2-135m:layer=3", backend="bfloat16")


def test_compare_indexes_are_kept_apart_by_backend(tmp_path, monkeypatch):
    """An index saved under index_root with one backend is never reused by a config asking for another."""
    from typing import get_args

    from retrieval_icl.experiment.compare_config import CompareConfig
    from retrieval_icl.experiment.inputs import get_index, load_pool, resolve_task
    from retrieval_icl.retrieval.sentence_encoder import BACKENDS

    assert get_args(CompareConfig.model_fields["encoder_backend"].annotation) == BACKENDS
    monkeypatch.setenv("RICL_CACHE_DIR", str(tmp_path / "cache"))
    directories = {}
    for backend in ("torch", "bfloat16", "bfloat16"):
        config = CompareConfig(task="sst2", data_dir=str(SST2.parents[1]), index_root=str(tmp_path / "indexes"),
                               encoder_backend=backend)
        task = resolve_task(config)
        index = get_index(config, load_pool(config.pools[0], config, task), task, config.encoder)
        assert index.manifest.encoder_backend == backend and index.encoder.backend == backend
        directories[backend] = sorted(p.name for p in (tmp_path / "indexes").iterdir())
    assert len(directories["torch"]) == 1 and len(directories["bfloat16"]) == 2
    assert not index.encoder.loaded  # the second bfloat16 config loaded the saved index: nothing was embedded
    new = (set(directories["bfloat16"]) - set(directories["torch"])).pop()
    assert new == directories["torch"][0] + "-bfloat16"


def test_weights_rewritten_at_the_same_path_miss_the_cache_and_are_refused_by_the_index(tmp_path):
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer

    from retrieval_icl.data.examples import Example
    from retrieval_icl.retrieval.index import DemoIndex
    from retrieval_icl.retrieval.sentence_encoder import packaged_encoder_path

    folder = tmp_path / "model"
    shutil.copytree(packaged_encoder_path(), folder)
    first = Encoder(str(folder), cache_dir=tmp_path / "emb")
    before = first.encode(["a gorgeous film"])  # now in the cache
    examples = [Example(i, (t,), i % 2) for i, t in enumerate(["a gorgeous film", "a dull mess", "warm"])]
    DemoIndex(first).build(examples).save(tmp_path / "idx")
    retrained = SentenceTransformer(str(folder))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in retrained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    retrained.save(str(folder))  # new weights, same path and name
    second = Encoder(str(folder), cache_dir=tmp_path / "emb")
    after = second.encode(["a gorgeous film"])
    fresh = retrained.encode(["a gorgeous film"], normalize_embeddings=True)
    assert second.fingerprint != first.fingerprint
    assert np.allclose(after, fresh, atol=1e-5) and not np.allclose(after, before, atol=1e-2)  # a miss, not stale
    with pytest.raises(RiclError, match="embedded by other weights"):
        DemoIndex.load(tmp_path / "idx", encoder=second)
