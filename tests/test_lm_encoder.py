"""LM-kernel retrieval: hidden-state embeddings from the causal LM, plugged into DemoIndex."""

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.encoders import make_encoder
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.lm_encoder import LMEncoder
from retrieval_icl.selectors.knn import KNNSelector

TEXTS = ["a gorgeous, witty film", "dull and far too long", "the stock market fell sharply today",
         "shares dropped on wall street", "a warm and funny movie"]


def test_names_round_trip_and_bad_names_are_refused():
    enc = make_encoder("lm:smollm2-135m:layer=12:pooling=last")
    assert isinstance(enc, LMEncoder) and (enc.layer, enc.pooling) == (12, "last")
    assert enc.name == "lm:smollm2-135m:layer=12:pooling=last"
    assert make_encoder("lm:smollm2-135m").name == "lm:smollm2-135m:layer=middle:pooling=mean"
    assert not isinstance(make_encoder("sentence-transformers/all-MiniLM-L6-v2"), LMEncoder)
    with pytest.raises(RiclError, match="bad LM encoder option 'depth=3'"):
        make_encoder("lm:smollm2-135m:depth=3")
    with pytest.raises(RiclError, match="pooling must be one of"):
        LMEncoder(pooling="max")


@pytest.mark.lm
@pytest.mark.parametrize("pooling,layer", [("mean", 10), ("last", 10), ("mean", 1), ("last", 30)])
def test_embeddings_equal_the_models_hidden_states(smollm2, tmp_path, pooling, layer):
    enc = LMEncoder(layer=layer, pooling=pooling, cache_dir=tmp_path, batch_size=2, dtype="float32").load()
    vecs = enc.encode(TEXTS)
    assert vecs.shape == (5, 576) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    for text, vec in zip(TEXTS, vecs):  # one at a time, no padding, straight from the HF forward pass
        ids = smollm2.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            h = smollm2.model(**ids, output_hidden_states=True).hidden_states[layer][0]  # (T, hidden)
        ref = (h[1:].mean(0) if pooling == "mean" else h[-1]).numpy()  # mean leaves out the sink token
        np.testing.assert_allclose(vec, ref / np.linalg.norm(ref), atol=1e-4)


@pytest.mark.lm
def test_lm_kernel_index_saves_loads_and_retrieves(smollm2, tmp_path):
    pool = [Example(i, (t,), i % 2) for i, t in enumerate(TEXTS)]
    index = DemoIndex(LMEncoder(layer=15, cache_dir=tmp_path)).build(pool)
    index.save(tmp_path / "lm-index")
    loaded = DemoIndex.load(tmp_path / "lm-index")
    assert loaded.manifest.encoder == "lm:smollm2-135m:layer=15:pooling=mean" and loaded.manifest.dimension == 576
    chosen = KNNSelector(order="nearest_first").fit(loaded).select(["stocks tumbled on wall street"], 2)[0]
    assert set(chosen.demo_ids) == {2, 3}  # the two finance sentences
    with pytest.raises(RiclError, match="built with encoder"):
        DemoIndex.load(tmp_path / "lm-index", encoder=LMEncoder(layer=3, cache_dir=tmp_path))


@pytest.mark.lm
@pytest.mark.shared_data
def test_compare_runs_an_lm_kernel_selector_on_its_own_index(smollm2, tmp_path):
    import json

    from retrieval_icl.experiment.compare import run_compare
    from retrieval_icl.experiment.compare_config import CompareConfig, SelectorConfig

    config = CompareConfig(task="sst2", data_dir=str(SHARED_DATA), pool_size=120, n_queries=8, k=4,
                           capture_attention=False,
                           selectors=[SelectorConfig(name="knn"),
                                      SelectorConfig(name="knn", label="lm-knn", encoder="lm:smollm2-135m:layer=15")],
                           index_root=str(tmp_path / "idx"), output_dir=str(tmp_path / "out"))
    rows, tests, out = run_compare(config)
    assert [r["run"] for r in rows] == ["knn-seed0", "lm-knn-seed0"] and tests == []
    manifests = [json.loads((d / "manifest.json").read_text())["encoder"] for d in (tmp_path / "idx").iterdir()]
    assert sorted(manifests) == ["lm:smollm2-135m:layer=15:pooling=mean", "sentence-transformers/all-MiniLM-L6-v2"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    lm = [r["demo_ids"] for r in records if r["selector"] == "lm-knn"]
    st = [r["demo_ids"] for r in records if r["selector"] == "knn"]
    assert lm != st  # another kernel, other neighbours
