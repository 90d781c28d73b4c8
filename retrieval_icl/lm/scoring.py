"""What scoring means, without a model: label scores, score requests, the Scorer interface, and calibration.

A Scorer turns token-id prompts into label log-probs (and attention rows when asked). `LMRunner` scores on this
machine, `RayRunner` on Ray workers; tests use a small deterministic stand-in. A comparison hands its scorer all
its requests at once (`score_many`), so a scorer that gains from seeing every prompt (Ray: one job, each worker
loading the model once) can batch them; the default answers them one `score` call each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RiclError


@dataclass
class LabelScores:
    """Scores of every label for one prompt."""

    log_probs: np.ndarray  # (n_labels,) float64: sum over label tokens of log p(token | prompt, previous label tokens)
    attention: np.ndarray | None = None  # (n_layers, n_heads, prompt_len) float32, from the last prompt token


@dataclass(frozen=True)
class ScoreRequest:
    """Prompts to score against one set of label continuations."""

    prompts: list[list[int]]
    continuations: list[list[int]]
    capture_attention: bool = False
    show_progress: bool = False


class Scorer(ABC):
    """Label log-probs for token-id prompts; see `LMRunner` for the scoring contract every scorer keeps."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The model's tokenizer (a Hugging Face tokenizer)."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Longest prompt + label the model takes, in tokens."""

    @abstractmethod
    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
              capture_attention: bool = False, show_progress: bool = False) -> list[LabelScores]:
        """Label log-probs (and attention rows when asked) for each prompt, in the prompts' order."""

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[list[LabelScores]]:
        """The answers to several requests, in order (one `score` call each unless a scorer batches them)."""
        return [self.score(r.prompts, r.continuations, r.capture_attention, r.show_progress) for r in requests]

    def label_continuations(self, label_words: Sequence[str], label_prefix: str = " ") -> list[list[int]]:
        """Token ids of `label_prefix + word` for each label word (no special tokens)."""
        out = [self.tokenizer(label_prefix + w, add_special_tokens=False)["input_ids"] for w in label_words]
        for word, ids in zip(label_words, out):
            if not ids:
                raise RiclError(f"label {label_prefix + word!r} tokenizes to no tokens; expected a non-empty label.")
        if len({tuple(ids) for ids in out}) < len(out):
            raise RiclError(f"labels {list(label_words)} tokenize alike; expected distinct labels.")
        return out

    def check_inputs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> None:
        """Non-empty prompts and continuations that fit the context window."""
        if len(prompts) == 0 or len(continuations) == 0:
            raise RiclError(f"need at least one prompt and one label, got {len(prompts)} and {len(continuations)}.")
        if any(len(c) == 0 for c in continuations):
            raise RiclError("a label continuation is empty; expected token ids from `label_continuations`.")
        longest_label = max(len(c) for c in continuations)
        for i, p in enumerate(prompts):
            if len(p) == 0 or len(p) + longest_label > self.context_length:
                raise RiclError(
                    f"prompt {i} has {len(p)} tokens; expected 1 to {self.context_length - longest_label} "
                    f"(context {self.context_length} minus the longest label, {longest_label} tokens)."
                )


def calibrate(log_probs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): label probs / content-free probs, renormalised; logs."""
    lp = np.asarray(log_probs, dtype=np.float64)  # (n, L)
    cf = np.asarray(content_free, dtype=np.float64)  # (L,) or (n, L)
    if lp.ndim != 2 or cf.shape not in ((lp.shape[1],), lp.shape):
        raise RiclError(
            f"calibrate needs log_probs (n, L) and content_free (L,) or (n, L); got {lp.shape} and {cf.shape}."
        )
    return log_normalise(log_normalise(lp) - log_normalise(cf))


def log_normalise(x: np.ndarray) -> np.ndarray:
    """Log-probs renormalised over the last axis (log-sum-exp with the max trick)."""
    top = x.max(axis=-1, keepdims=True)
    return x - (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))
