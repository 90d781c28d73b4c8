"""Causal LMs built from their architecture's config with random weights: every GPU path can be checked for code
and speed (never accuracy) on a machine that cannot download weights.

The shapes are the public configs of the models the project runs (the packaged SmolLM2-135M and Gemma 3 270M, the
paper's GPT-J-6B) and of one larger modern model (Llama 3 8B), plus the tests' 2-layer GPT-J.

    loaded = random_causal_lm("gpt-j-6b", device="cuda", dtype="bfloat16")   # ~12 GB of random bfloat16 weights
    LMRunner(loaded=loaded).score(prompts, continuations, capture_attention=True)

A random model needs no tokenizer: prompts are token ids below `vocab_size`, padded with id 0.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import RiclError
from .models import LoadedModel, resolve_device, resolve_dtype

# model_type -> config fields, copied from each model's config.json (what from_config needs for its shape and maths)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-gptj": ("gptj", dict(n_layer=2, n_head=4, n_embd=64, rotary_dim=8, vocab_size=1000, n_positions=256,
                               bos_token_id=0, eos_token_id=0)),
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                                   max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)),
    "gemma3-270m": ("gemma3_text", dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                        vocab_size=262144, max_position_embeddings=32768, sliding_window=512,
                                        query_pre_attn_scalar=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
                                        rope_parameters={
                                            "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                            "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
                                        bos_token_id=2, eos_token_id=1, pad_token_id=0)),
    "gpt-j-6b": ("gptj", dict(n_layer=28, n_head=16, n_embd=4096, rotary_dim=64, vocab_size=50400, n_positions=2048,
                              bos_token_id=50256, eos_token_id=50256)),
    "llama-3-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                 max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                 rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
                                 bos_token_id=128000, eos_token_id=128001)),
}


def random_config(shape: str) -> Any:
    """The transformers config of a named shape; RiclError lists the shapes for an unknown name."""
    from transformers import AutoConfig

    if shape not in SHAPES:
        raise RiclError(f"unknown model shape {shape!r}; expected one of {sorted(SHAPES)}")
    model_type, fields = SHAPES[shape]
    return AutoConfig.for_model(model_type, **fields)


def random_causal_lm(shape: str, device: str | None = None, dtype: str = "auto", seed: int = 0) -> LoadedModel:
    """A causal LM of `shape` with seeded random weights, built directly on `device` in `dtype`, eval mode, sdpa
    attention; its `tokenizer` only pads (id 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = random_config(shape)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    with torch.device(dev):  # weights created where they run: a 6B model never passes through host memory
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, dev), attn_implementation="sdpa")
    context = getattr(config, "max_position_embeddings", None) or config.n_positions
    return LoadedModel(model.eval(), SimpleNamespace(pad_token_id=0), shape, int(context), config.num_hidden_layers,
                       config.num_attention_heads)


def save_random_model(shape: str, tokenizer_dir: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A model folder `ricl compare` can name as `model:` (random float32 weights of `shape` plus the tokenizer files
    of `tokenizer_dir`), for timing the main job where no weights can be downloaded."""
    from transformers import AutoTokenizer

    out = Path(out)
    random_causal_lm(shape, "cpu", "float32", seed).model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out)
    return out


def save_random_encoder(encoder_dir: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A sentence-transformers folder with the modules, config and tokenizer of `encoder_dir` and random transformer
    weights of the same shape (for timing; its embeddings mean nothing)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel

    source, out = Path(encoder_dir), Path(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "openvino"))
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(str(source))).save_pretrained(out)
    return out
