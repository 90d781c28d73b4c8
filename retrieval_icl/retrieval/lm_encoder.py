"""LM-kernel retrieval: embed texts with a causal LM's own hidden states, so an index retrieves by the LM's similarity.

Han et al. (2023) find that the sentence-encoder kernel is not the kernel the LM uses. An `LMEncoder` plugs into
`DemoIndex` like any encoder; its name, e.g. ``lm:smollm2-135m:layer=15:pooling=mean``, is saved in the manifest
so a loaded index re-creates it:

    >>> LMEncoder.parse("lm:smollm2-135m:layer=12:pooling=last")
    ('smollm2-135m', 12, 'last')
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import RiclError
from .sentence_encoder import LM_PREFIX, Encoder

POOLINGS = ("mean", "last")


class LMHiddenStates:
    """The part of the SentenceTransformer API `Encoder` calls: `encode` and `get_embedding_dimension`."""

    def __init__(self, loaded, layer: int | None, pooling: str):
        self.loaded = loaded
        n = loaded.n_layers
        self.layer = n // 2 if layer is None else layer
        if not 0 <= self.layer <= n:
            raise RiclError(f"layer must be in 0..{n} for {loaded.name} (0 = embeddings), got {layer}")
        self.pooling = pooling

    def get_embedding_dimension(self) -> int:
        return int(self.loaded.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 16, **_: object) -> np.ndarray:
        """(n, hidden) float32 unit rows: the chosen layer's hidden states, mean- (first token left out) or
        last-token-pooled."""
        out = [self._batch(list(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        vecs = np.concatenate(out) if out else np.zeros((0, self.get_embedding_dimension()), np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    def _batch(self, texts: list[str]) -> np.ndarray:
        tok = self.loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True)
        tok = {k: v.to(self.loaded.device) for k, v in tok.items()}
        hidden = self._hidden_states(tok).float()  # (b, T, h)
        mask = tok["attention_mask"]  # (b, T), right padding
        if self.pooling == "last":
            pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
        else:
            # The first position is an attention sink with activations ~100x the others (seen in SmolLM2: norm
            # 24,700 vs 190 at layer 15); averaging it in makes every text look alike, so it is left out.
            mask = mask.clone()
            mask[mask.sum(1) > 1, 0] = 0
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return pooled.cpu().numpy().astype(np.float32)

    def _hidden_states(self, tok: dict[str, torch.Tensor]) -> torch.Tensor:
        """hidden_states[layer] of the model's forward, stopping after that layer when a later one exists (the
        layers above it would be computed for nothing: half the model at the default middle layer)."""
        layers = _decoder_layers(self.loaded.model, self.loaded.n_layers)
        if layers is None or not 0 < self.layer < self.loaded.n_layers:  # the last one is after the final norm
            return self.loaded.model(**tok, output_hidden_states=True).hidden_states[self.layer]
        caught: list[torch.Tensor] = []

        def stop(_module: torch.nn.Module, _args: object, output: object) -> None:
            caught.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = layers[self.layer - 1].register_forward_hook(stop)
        try:
            self.loaded.model(**tok)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return caught[0]


class _StopForward(Exception):
    """Raised from a forward hook to end a forward pass once the wanted layer has run."""


def _decoder_layers(model: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList | None:
    """The model's list of decoder blocks (model.layers, transformer.h, ...): the first ModuleList of n_layers."""
    return next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers), None)


class LMEncoder(Encoder):
    """An `Encoder` whose vectors are a causal LM's hidden states at one layer (same cache, same interface)."""

    def __init__(self, model: str = "smollm2-135m", layer: int | None = None, pooling: str = "mean",
                 batch_size: int = 16, device: str | None = None, dtype: str = "auto",
                 cache_dir: str | Path | None = None, use_cache: bool = True):
        if pooling not in POOLINGS:
            raise RiclError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        super().__init__(model, batch_size=batch_size, device=device, cache_dir=cache_dir, use_cache=use_cache)
        self.layer = layer
        self.pooling = pooling
        self.dtype = dtype

    @property
    def name(self) -> str:
        layer = "middle" if self.layer is None else self.layer
        return f"{LM_PREFIX}{self.model}:layer={layer}:pooling={self.pooling}"

    @property
    def dimension(self) -> int:
        if self._model is None:
            raise RiclError(f"encoder {self.name} is not loaded; call load() before asking for its dimension")
        return self._model.get_embedding_dimension()

    def load(self) -> "LMEncoder":
        """Load the causal LM (packaged GGUF models come from the safetensors cache); returns self."""
        if self._model is None:
            from ..lm.models import load_causal_lm

            self._model = LMHiddenStates(load_causal_lm(self.model, self.device, self.dtype), self.layer, self.pooling)
        return self

    @staticmethod
    def parse(name: str) -> tuple[str, int | None, str]:
        """`lm:MODEL[:layer=N|middle][:pooling=mean|last]` -> (model, layer, pooling)."""
        model, *options = name[len(LM_PREFIX):].split(":")
        layer, pooling = None, "mean"
        for option in options:
            key, _, value = option.partition("=")
            if key == "layer" and (value == "middle" or value.isdigit()):
                layer = None if value == "middle" else int(value)
            elif key == "pooling" and value in POOLINGS:
                pooling = value
            else:
                raise RiclError(f"bad LM encoder option {option!r} in {name!r}; expected layer=N|middle or "
                                f"pooling=mean|last")
        if not model:
            raise RiclError(f"LM encoder name {name!r} names no model; expected e.g. 'lm:smollm2-135m:layer=15'")
        return model, layer, pooling
