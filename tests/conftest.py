"""Shared fixtures. Models: the packaged SmolLM2 (loaded once per session) and a tiny random GPT-J."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_runner():
    """An LMRunner holding the packaged SmolLM2-135M on CPU float32 (converted to the safetensors cache once)."""
    from retrieval_icl.runner import LMRunner

    return LMRunner("smollm2-135m", batch_size=4, device="cpu", dtype="float32").load()


@pytest.fixture(scope="session")
def smollm2(smollm2_runner):
    """The packaged SmolLM2 as a LoadedModel (the runner's own, so it is loaded once)."""
    return smollm2_runner.loaded


@pytest.fixture(scope="session")
def tiny_gptj():
    """A 2-layer, 4-head randomly initialised GPT-J (vocab 1000, 256 positions), eval mode, sdpa attention."""
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    config = GPTJConfig(
        n_layer=2, n_head=4, n_embd=64, rotary_dim=8, vocab_size=1000, n_positions=256, bos_token_id=0, eos_token_id=0
    )
    return GPTJForCausalLM(config).eval()
