"""The ONNX Runtime encoder backend on the packaged all-MiniLM-L6-v2: agreement with torch, the export cache, the
index round trip and the errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval_icl.cache_dirs import cache_dir
from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.onnx_encoder import OnnxSentenceModel
from retrieval_icl.retrieval.sentence_encoder import Encoder

SST2 = Path(__file__).resolve().parent / "data" / "sst2" / "train.jsonl"  # 40 hand-made reviews
TEXTS = [json.loads(line)["sentence"] for line in SST2.read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One RICL_CACHE_DIR for the module, so each backend is exported once."""
    return tmp_path_factory.mktemp("ricl-cache")


@pytest.fixture(autouse=True)
def cache_env(cache, monkeypatch):
    monkeypatch.setenv("RICL_CACHE_DIR", str(cache))


@pytest.fixture(scope="module")
def reference(cache) -> np.ndarray:
    return Encoder("all-MiniLM-L6-v2", cache_dir=cache / "embeddings", use_cache=False).encode(TEXTS)


def test_onnx_float32_equals_torch(reference):
    encoder = Encoder("all-MiniLM-L6-v2", backend="onnx", use_cache=False)
    got = encoder.encode(TEXTS)
    assert isinstance(encoder.loaded_model, OnnxSentenceModel)
    assert got.dtype == np.float32 and got.shape == (40, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, reference, atol=2e-5)  # the same float32 model, another runtime


def test_the_export_is_made_once_and_reused(cache):
    first = Encoder("all-MiniLM-L6-v2", backend="onnx", use_cache=False).load().loaded_model
    stamp = first.path.stat().st_mtime_ns
    again = Encoder("all-MiniLM-L6-v2", backend="onnx", use_cache=False).load().loaded_model
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert first.path.parent.parent == cache_dir("onnx") == cache / "onnx"
    assert [p.name for p in first.path.parent.iterdir()] == ["model.onnx"]  # no temp files left behind


def test_an_onnx_index_round_trip(tmp_path):
    examples = [Example(id=i, texts=(t,), label=i % 2) for i, t in enumerate(TEXTS)]
    index = DemoIndex(Encoder("all-MiniLM-L6-v2", backend="onnx", cache_dir=tmp_path / "emb"))
    index.build(examples, task="sst2", label_names=["negative", "positive"], text_fields=["sentence"])
    index.save(tmp_path / "index")
    loaded = DemoIndex.load(tmp_path / "index")
    assert loaded.manifest.encoder_backend == "onnx" and loaded.encoder.backend == "onnx"
    _, ids = loaded.search_texts([TEXTS[7]], k=3)
    assert ids[0][0] == 7
    with pytest.raises(RiclError, match="embedded with encoder backend 'onnx'; refusing to use it with backend "
                                        "'torch'"):
        DemoIndex.load(tmp_path / "index", encoder=Encoder("all-MiniLM-L6-v2"))


def test_clear_errors(monkeypatch):
    with pytest.raises(RiclError, match="encoder backend 'onnx' runs on the CPU; got device 'cuda'"):
        Encoder("all-MiniLM-L6-v2", backend="onnx", device="cuda")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the onnx extra were not installed
    with pytest.raises(RiclError, match=r"the onnx encoder backend needs onnxruntime and onnx .*pip install -e "
                                        r"\"\.\[onnx\]\""):
        Encoder("all-MiniLM-L6-v2", backend="onnx", use_cache=False).load()
