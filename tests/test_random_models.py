"""random_models.py: the shapes are the real models' configs, the builds are seeded and score like any model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval_icl.errors import RiclError
from retrieval_icl.lm.random_models import SHAPES, random_causal_lm, random_config
from retrieval_icl.lm.runner import LMRunner

SHAPE_FIELDS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "rope_parameters",
                "sliding_window", "layer_types", "query_pre_attn_scalar", "bos_token_id", "eos_token_id"]


@pytest.mark.lm
@pytest.mark.parametrize("shape", ["smollm2-135m", "gemma3-270m"])
def test_shapes_equal_the_packaged_models_configs(request, shape):
    real = request.getfixturevalue(shape.split("-")[0]).model.config
    mine = random_config(shape)
    for field in SHAPE_FIELDS:
        assert getattr(mine, field, None) == getattr(real, field, None), field
    assert mine.rms_norm_eps == pytest.approx(real.rms_norm_eps, rel=1e-6)


@pytest.mark.parametrize("shape, billions", [("gpt-j-6b", 6.05), ("llama-3-8b", 8.03)])
def test_large_shapes_have_their_published_size(shape, billions):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # no memory: only the parameter shapes
        model = AutoModelForCausalLM.from_config(random_config(shape))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_builds_are_seeded_and_score():
    a, b, c = (random_causal_lm("tiny-gptj", "cpu", "float32", seed) for seed in (0, 0, 1))
    assert (a.n_layers, a.n_heads, a.context_length) == (2, 4, 256)
    prompts, labels = [[5, 9, 13], [7] * 11], [[3], [4, 6]]
    score = [np.stack([s.log_probs for s in LMRunner(loaded=m).score(prompts, labels)]) for m in (a, b, c)]
    np.testing.assert_array_equal(score[0], score[1])
    assert np.abs(score[0] - score[2]).max() > 1e-3  # another seed, other weights
    assert next(random_causal_lm("tiny-gptj", "cpu", "bfloat16").model.parameters()).dtype == torch.bfloat16


def test_unknown_shape_lists_the_shapes():
    with pytest.raises(RiclError, match="unknown model shape 'gpt-5'.*gemma3-270m.*tiny-gptj"):
        random_config("gpt-5")
    assert set(SHAPES) == {"tiny-gptj", "smollm2-135m", "gemma3-270m", "gpt-j-6b", "llama-3-8b"}
