"""Shared fixtures. Models: the packaged SmolLM2 and Gemma 3 (each loaded once per session) and a tiny random GPT-J.
Tests marked `shared_data` are skipped where the benchmark datasets (`shared_data.SHARED_DATA`) are absent."""

from __future__ import annotations

import pytest
import torch
from selector_pools import tiny_sst2, topic_index
from shared_data import SHARED_DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test marked `shared_data`, naming the missing folder, where ../shared/data is not there."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared_data: no benchmark datasets at {SHARED_DATA} (../shared/data beside the "
                                   "repository)")
    for item in items:
        if item.get_closest_marker("shared_data") is not None:
            item.add_marker(skip)


def packaged_cpu_runner(name: str):
    """An LMRunner holding a packaged model on CPU float32 (converted to the safetensors cache once)."""
    from retrieval_icl.lm.runner import LMRunner

    return LMRunner(name, batch_size=4, device="cpu", dtype="float32").load()


@pytest.fixture(scope="session")
def smollm2_runner():
    """The packaged SmolLM2-135M (no BOS added by its tokenizer)."""
    return packaged_cpu_runner("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_runner):
    """The packaged SmolLM2 as a LoadedModel (the runner's own, so it is loaded once)."""
    return smollm2_runner.loaded


@pytest.fixture(scope="session")
def gemma3_runner():
    """The packaged Gemma 3 270M (BOS-adding tokenizer, sliding-window layers; first conversion about 1.5 min)."""
    return packaged_cpu_runner("gemma3-270m")


@pytest.fixture(scope="session")
def gemma3(gemma3_runner):
    """The packaged Gemma 3 as a LoadedModel."""
    return gemma3_runner.loaded


@pytest.fixture(params=["smollm2", "gemma3"])
def packaged_runner(request):
    """Each packaged model's session runner in turn: a test that holds for every packaged model takes this fixture
    (or `packaged_lm`) and runs once per model, with the model's name in its id."""
    return request.getfixturevalue(f"{request.param}_runner")


@pytest.fixture
def packaged_lm(packaged_runner):
    """The LoadedModel of `packaged_runner`."""
    return packaged_runner.loaded


@pytest.fixture(scope="session")
def tiny_gptj():
    """A 2-layer, 4-head randomly initialised GPT-J (vocab 1000, 256 positions), eval mode, sdpa attention."""
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    config = GPTJConfig(
        n_layer=2, n_head=4, n_embd=64, rotary_dim=8, vocab_size=1000, n_positions=256, bos_token_id=0, eos_token_id=0
    )
    return GPTJForCausalLM(config).eval()


@pytest.fixture
def perfect(tmp_path):
    """A hand-made results directory: one knn run, prediction always gold, head (1, 2) follows it (no model)."""
    from handmade_results import perfect_dir

    return perfect_dir(tmp_path / "perfect")


@pytest.fixture
def study(tmp_path):
    """A hand-made results directory with every condition: 4 selectors x 2 label formats x 2 pools (no model)."""
    from handmade_results import study_dir

    return study_dir(tmp_path / "study")


@pytest.fixture(scope="session")
def pool_encoder(tmp_path_factory):
    """The packaged sentence encoder with an embedding cache of this session's own (the selector tests' pools)."""
    from retrieval_icl.retrieval.sentence_encoder import Encoder

    return Encoder(cache_dir=tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="session")
def topics(pool_encoder):
    """Nine sentences on three topics (selector_pools.TOPICS); label = topic number; topic_of maps id -> topic name."""
    return topic_index(pool_encoder)


@pytest.fixture(scope="session")
def pool_and_queries(pool_encoder):
    """(index, pool, queries): the 40 tiny SST-2 train lines as the pool, the 8 validation lines as queries."""
    return tiny_sst2(pool_encoder)


@pytest.fixture(scope="session")
def sst2(pool_and_queries):
    """(index, queries) of the tiny SST-2 pool."""
    index, _, queries = pool_and_queries
    return index, queries
