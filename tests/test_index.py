"""DemoIndex against numpy brute force on seeded synthetic embeddings; atomic save and validated load."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from retrieval_icl import atomic_dir
from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval import index as index_mod
from retrieval_icl.retrieval.index import INDEX_TYPES, DemoIndex, IndexManifest
from retrieval_icl.retrieval.sentence_encoder import Encoder

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def pool(n: int, d: int = DIM, seed: int = 0, first_id: int = 100) -> tuple[list[Example], np.ndarray]:
    """n examples with non-positional ids (so row -> id mapping is exercised) and unit vectors (n, d)."""
    rng = np.random.default_rng(seed)
    examples = [Example(id=first_id + 3 * i, texts=(f"text {first_id + 3 * i}",), label=i % 2) for i in range(n)]
    return examples, unit(rng.standard_normal((n, d)))


def clustered(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d))
    return unit(centers[rng.integers(n_clusters, size=n)] + 0.3 * rng.standard_normal((n, d)))


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows and scores by inner product, (n_q, k) each."""
    scores = q @ x.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def fake_encoder(name: str = "fake/encoder") -> Encoder:
    return Encoder(name, use_cache=False)


def built(index_type: str = "flat", n: int = 200, **kw) -> tuple[DemoIndex, list[Example], np.ndarray]:
    examples, x = pool(n)
    idx = DemoIndex(fake_encoder(), index_type, **kw).build(examples, embeddings=x, task="synthetic")
    return idx, examples, x


def test_flat_matches_brute_force_ties_allowed():
    idx, examples, x = built("flat", n=300)
    row_of = {ex.id: row for row, ex in enumerate(examples)}
    q = unit(np.random.default_rng(1).standard_normal((20, DIM)))
    scores, ids = idx.search(q, 10)
    want_scores, want_rows = brute_force(x, q, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (20, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    for i in range(len(q)):
        # Each returned id scores what FAISS says; ids may differ from brute force only among ties at the k-th score.
        np.testing.assert_allclose(x[[row_of[j] for j in ids[i]]] @ q[i], scores[i], atol=1e-5)
        sure = {examples[r].id for r, s in zip(want_rows[i], want_scores[i]) if s > want_scores[i, -1] + 1e-5}
        assert sure <= set(ids[i].tolist())


def test_blockwise_flat_search_equals_faiss(monkeypatch):
    examples, x = pool(500, seed=3)
    idx = DemoIndex(fake_encoder()).build(examples, embeddings=x)
    monkeypatch.setattr(index_mod, "SCORE_BLOCK", 500 * 7)  # blocks of 7 queries, the last one short
    q = unit(np.random.default_rng(4).standard_normal((23, DIM)))
    scores, ids = idx.search(q, 12)
    reference = faiss.IndexFlatIP(DIM)
    reference.add(x)
    want_scores, want_rows = reference.search(q, 12)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    np.testing.assert_array_equal(ids, np.array([[examples[r].id for r in row] for row in want_rows]))
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


def test_exact_ties_return_any_tied_id():
    examples, x = pool(4)
    x[1] = x[0]  # two identical vectors tie exactly
    idx = DemoIndex(fake_encoder()).build(examples, embeddings=x)
    scores, ids = idx.search(x[:1], 2)
    assert set(ids[0]) == {examples[0].id, examples[1].id}
    np.testing.assert_allclose(scores[0], [1.0, 1.0], atol=1e-5)


def test_k_larger_than_pool_pads():
    idx, examples, x = built("flat", n=5)
    scores, ids = idx.search(x[:2], 8)
    assert ids.shape == (2, 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert set(ids[0, :5]) == {ex.id for ex in examples}


def test_empty_pool_and_bad_arguments_refused():
    with pytest.raises(RiclError, match="empty pool"):
        DemoIndex(fake_encoder()).build([], embeddings=np.empty((0, DIM), np.float32))
    with pytest.raises(RiclError, match="empty"):
        DemoIndex(fake_encoder()).search(np.zeros((1, DIM), np.float32), 3)
    with pytest.raises(RiclError, match="flat"):
        DemoIndex(fake_encoder(), "annoy")
    idx, _, x = built("flat", n=10)
    with pytest.raises(RiclError, match="k must be a positive integer"):
        idx.search(x[:1], 0)
    with pytest.raises(RiclError, match="query dimension 8 does not match the index dimension 16"):
        idx.search(np.ones((1, 8), np.float32), 3)
    with pytest.raises(RiclError, match="one row per example"):
        DemoIndex(fake_encoder()).build(pool(3)[0], embeddings=x[:2])


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_recall_at_10(index_type):
    x = clustered(5000, 64, n_clusters=50, seed=0)
    rng = np.random.default_rng(2)
    q = unit(x[rng.choice(5000, 100, replace=False)] + 0.2 * rng.standard_normal((100, 64)))  # queries near the pool
    examples = [Example(id=i, texts=(str(i),), label=0) for i in range(5000)]
    idx = DemoIndex(fake_encoder(), index_type).build(examples, embeddings=x)
    _, ids = idx.search(q, 10)
    _, want = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
    assert recall >= 0.95, f"{index_type} recall@10 = {recall:.3f}"


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_save_load_round_trip_then_add(tmp_path, index_type):
    idx, examples, x = built(index_type, n=400)
    q = unit(np.random.default_rng(5).standard_normal((10, DIM)))
    np.testing.assert_allclose(idx.embeddings([examples[5].id]), x[[5]], atol=1e-6)
    path = idx.save(tmp_path / "idx")
    assert sorted(p.name for p in path.iterdir()) == ["examples.jsonl", "index.faiss", "manifest.json"]
    loaded = DemoIndex.load(path)
    for got, want in zip(loaded.search(q, 7), idx.search(q, 7)):
        np.testing.assert_array_equal(got, want)
    assert loaded.examples == examples and loaded.manifest.index_type == index_type
    assert loaded.manifest.encoder == "fake/encoder" and loaded.manifest.task == "synthetic"
    np.testing.assert_allclose(loaded.embeddings([examples[3].id, examples[0].id]), x[[3, 0]], atol=1e-6)

    more, y = pool(50, seed=9, first_id=10_000)
    loaded.add(more, embeddings=y)
    loaded.save(path)
    again = DemoIndex.load(path)
    assert len(again) == 450 and again.manifest.count == 450 and again.example(more[7].id) == more[7]
    np.testing.assert_allclose(again.embeddings([more[7].id]), y[[7]], atol=1e-6)
    scores, ids = again.search(y[:3], 1)
    assert ids[:, 0].tolist() == [ex.id for ex in more[:3]]
    assert again.manifest.dataset_fingerprint != idx.manifest.dataset_fingerprint


def test_add_refuses_duplicate_ids():
    idx, examples, x = built("flat", n=10)
    with pytest.raises(RiclError, match=f"id {examples[2].id} is already"):
        idx.add([examples[2]], embeddings=x[:1])
    dup = [Example(1, ("a",), 0), Example(1, ("b",), 0)]
    with pytest.raises(RiclError, match="already"):
        DemoIndex(fake_encoder()).build(dup, embeddings=x[:2])


@pytest.mark.parametrize("step", ["write_index", "examples"])
def test_interrupted_save_keeps_old_index(tmp_path, monkeypatch, step):
    old, old_examples, _ = built("flat", n=20)
    path = old.save(tmp_path / "idx")
    new, _, _ = built("hnsw", n=30)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash mid-save")

    if step == "write_index":
        monkeypatch.setattr(index_mod.faiss, "write_index", crash)
    else:
        monkeypatch.setattr(index_mod, "example_line", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    survivor = DemoIndex.load(path)
    assert survivor.examples == old_examples and survivor.manifest.index_type == "flat"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no .idx.tmp-* / .idx.old-* left


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    idx, _, _ = built("flat", n=5)
    monkeypatch.setattr(atomic_dir, "swap_in", lambda tmp, target: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        idx.save(tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_mismatched_encoder(tmp_path):
    idx, _, _ = built("flat", n=5)
    path = idx.save(tmp_path / "idx")
    with pytest.raises(RiclError,
                       match="built with encoder fake/encoder \\(dim 16\\); refusing to use it with encoder other"):
        DemoIndex.load(path, encoder=Encoder("other/encoder", use_cache=False))


def test_load_refuses_encoder_of_other_dimension(tmp_path):
    idx, _, _ = built("flat", n=5)
    path = idx.save(tmp_path / "idx")

    class Loaded(Encoder):  # an encoder with the right name but 768-dim output, without loading a model
        loaded = True
        dimension = 768

    with pytest.raises(RiclError, match="\\(dim 16\\); refusing to use it with encoder fake/encoder \\(dim 768\\)"):
        DemoIndex.load(path, encoder=Loaded("fake/encoder", use_cache=False))


def test_load_refuses_corrupt_or_incomplete(tmp_path):
    idx, _, _ = built("flat", n=5)
    path = idx.save(tmp_path / "idx")
    (path / "index.faiss").write_bytes(b"definitely not faiss" * 10)
    with pytest.raises(RiclError, match="index.faiss: 200 bytes, but the manifest says"):  # checked before FAISS
        DemoIndex.load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "index_bytes": None}))  # as older manifests
    with pytest.raises(RiclError, match="index.faiss is corrupt or not a FAISS index"):
        DemoIndex.load(path)
    path = idx.save(tmp_path / "idx")
    (path / "manifest.json").unlink()
    with pytest.raises(RiclError, match="missing manifest.json"):
        DemoIndex.load(path)
    with pytest.raises(RiclError, match="no index directory"):
        DemoIndex.load(tmp_path / "nowhere")


def test_load_refuses_bad_manifest_and_count_mismatch(tmp_path):
    idx, _, _ = built("flat", n=5)
    path = idx.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "dimension": "wide"}))
    with pytest.raises(RiclError, match="manifest.json: field dimension"):
        DemoIndex.load(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "count": 6}))
    with pytest.raises(RiclError, match="files disagree"):
        DemoIndex.load(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "examples.jsonl").write_text("{}\n")
    with pytest.raises(RiclError, match="examples.jsonl:1"):
        DemoIndex.load(path)


def test_manifest_fields():
    idx, examples, _ = built("ivf", n=200)
    m = idx.manifest
    assert isinstance(m, IndexManifest) and m.count == 200 and m.dimension == DIM and m.metric == "inner_product"
    assert m.params["nlist"] == 5 and m.params["nprobe"] == 16  # 200 // 39 caps 4*sqrt(200)
    assert set(m.versions) == {"retrieval_icl", "faiss", "numpy", "sentence_transformers"}
    assert m.versions["faiss"] == faiss.__version__ and len(m.dataset_fingerprint) == 16


def test_manifest_records_the_encoder_backend_and_load_uses_it(tmp_path):
    examples, x = pool(5)
    idx = DemoIndex(Encoder("fake/encoder", use_cache=False, backend="bfloat16")).build(examples, embeddings=x)
    path = idx.save(tmp_path / "idx")
    assert json.loads((path / "manifest.json").read_text())["encoder_backend"] == "bfloat16"
    loaded = DemoIndex.load(path)  # encoder made from the manifest: queries embedded the way the pool was
    assert loaded.manifest.encoder_backend == "bfloat16" and loaded.encoder.backend == "bfloat16"
    same = Encoder("fake/encoder", use_cache=False, backend="bfloat16")
    assert DemoIndex.load(path, encoder=same).encoder is same
    with pytest.raises(RiclError, match="embedded with encoder backend 'bfloat16'; refusing to use it with backend "
                                        "'torch'"):
        DemoIndex.load(path, encoder=Encoder("fake/encoder", use_cache=False))


def test_a_manifest_without_a_backend_loads_as_torch(tmp_path):
    idx, _, _ = built("flat", n=5)
    path = idx.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest.pop("encoder_backend") == "torch"
    (path / "manifest.json").write_text(json.dumps(manifest))  # as written before the field existed
    loaded = DemoIndex.load(path)
    assert loaded.manifest.encoder_backend == "torch" and loaded.encoder.backend == "torch"


def test_a_manifest_naming_a_local_encoder_folder_runs_none_of_its_code(tmp_path):
    from typer.testing import CliRunner

    from retrieval_icl.cli import app
    from retrieval_icl.retrieval.sentence_encoder import packaged_encoder_path

    evil = tmp_path / "evil_encoder"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                    "type": "evil_module.Evil"}]))
    (evil / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\nclass Evil: pass\n")
    idx, _, _ = built("flat", n=5)
    path = idx.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "encoder": str(evil)}))
    with pytest.raises(RiclError, match="names the local encoder folder .*evil_encoder; an index's files alone"):
        DemoIndex.load(path)
    result = CliRunner().invoke(app, ["select", "--index", str(path), "a query"])
    assert result.exit_code == 2 and "may not choose code to load" in result.stderr
    assert CliRunner().invoke(app, ["index", "info", str(path)]).exit_code == 0  # reading runs nothing either
    assert not marker.exists()
    (path / "manifest.json").write_text(json.dumps({**manifest, "encoder": str(packaged_encoder_path())}))
    assert DemoIndex.load(path).encoder.name == str(packaged_encoder_path())  # the packaged one is trusted
