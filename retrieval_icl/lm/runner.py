"""Batched label scoring with a causal LM on this machine: label log-probs and, when asked, attention rows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RiclError
from .batching import BatchLimits, device_limits
from .capture import capture_attention as _capture_attention
from .models import DEFAULT_MODEL, LoadedModel, load_causal_lm, one_cpu_thread
from .scoring import LabelScores, Scorer

log = logging.getLogger(__name__)
_SMALL_PASS_TOKENS = 64  # label-tail passes with at most this many tokens run on one CPU thread
_FREE_MEMORY_SHARE = 0.5  # of the accelerator's free memory, what an automatic token budget may plan to fill
_MAX_AUTO_BATCH_TOKENS = 1 << 16  # wider batches gain nothing measurable on an H200 (benchmarks/README.md)


class LMRunner(Scorer):
    """Scores label continuations after tokenised prompts with a causal LM.

    Scoring contract:

    - A prompt is a list of token ids, scored exactly as given (no BOS or other special token is added: include
      one if the model needs it). It ends right before the label, e.g. with the tokens of ``"...Output:"``.
    - The label's continuation is ``tokenizer(label_prefix + word, add_special_tokens=False)``: the space between
      prompt and label belongs to the label (``label_prefix=" "`` by default), never to the prompt.
    - ``log_probs[j] = sum_t log p(c_j[t] | prompt, c_j[:t])`` over ALL tokens t of continuation j: natural log,
      full-vocabulary softmax, no length normalisation, no renormalisation over the label set.
    - The prediction position is the last prompt token. ``attention[l, h, i]`` is the post-softmax attention
      weight from that position to prompt position i in layer l, head h (each row sums to 1 over the prompt).
    - Batching (right padding, longest prompts first; on CPU at most `batch_size` rows, 8 by default, cut where
      padding would cost more than another forward; on an accelerator as few batches as fit `max_batch_tokens`
      padded tokens, by default sized from free memory; see `batching.py`) does not change results: batched equals
      one-at-a-time within 1e-4 in float32; a batch that runs out of accelerator memory is split in two and retried.
      Multi-token labels reuse the prompt's KV cache where the cache allows it, one pass per distinct run of leading
      label tokens.
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int | None = None, device: str | None = None,
                 dtype: str = "auto", loaded: LoadedModel | None = None, share_prompt_cache: bool = True,
                 max_batch_tokens: int | None = None):
        """`batch_size`: most prompts per forward (default 8 on CPU, no row limit on an accelerator);
        `max_batch_tokens`: most padded tokens per forward (default none on CPU, sized from free memory on an
        accelerator). `loaded`: an already loaded model to score with (then `load()` is not needed and `model` only
        names it). `share_prompt_cache=False` forces one full forward per (prompt, multi-token label) instead of
        reusing the prompt's KV cache (a reference path for tests)."""
        for name, value in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RiclError(f"{name} must be a positive integer or None, got {value!r}.")
        self.model = model
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.dtype = dtype
        self._loaded = loaded
        self._auto_tokens: dict[bool, int] = {}  # capture -> budget, sized once: the allocator's cache shrinks "free"
        self.share_prompt_cache = share_prompt_cache

    def load(self) -> "LMRunner":
        """Load the model and tokenizer; returns self."""
        self._loaded, self._auto_tokens = load_causal_lm(self.model, self.device, self.dtype), {}
        return self

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model; RiclError before `load()`."""
        if self._loaded is None:
            raise RiclError("the runner has no model yet: call `runner.load()` first.")
        return self._loaded

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self.loaded.tokenizer

    @property
    def context_length(self) -> int:
        """Longest prompt + label the model takes, in tokens."""
        return self.loaded.context_length

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        capture_attention: bool = False,
        show_progress: bool = False,
    ) -> list[LabelScores]:
        """Label log-probs (and attention rows when asked) for each prompt, in the prompts' order."""
        self.check_inputs(prompts, continuations)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: less padding
        bounds = self.batch_limits(capture_attention).cut([len(prompts[i]) for i in order])
        batches = [order[a:b] for a, b in bounds]
        results: list[LabelScores | None] = [None] * len(prompts)
        log.debug("scoring %d prompts x %d labels in %d batches", len(prompts), len(continuations), len(batches))
        with torch.inference_mode():
            for idx in tqdm(batches, desc="scoring", unit="batch", disable=not show_progress):
                for i, s in zip(idx, self._score_rows([prompts[i] for i in idx], continuations, capture_attention)):
                    results[i] = s
        return results  # type: ignore[return-value]

    def batch_limits(self, capture: bool = False) -> BatchLimits:
        """Rows and padded tokens per forward on the model's device (see `batching.device_limits`)."""
        on_cpu = self.loaded.device.type == "cpu"
        auto = None if on_cpu or self.max_batch_tokens else self.auto_batch_tokens(capture)
        return device_limits(on_cpu, self.batch_size, self.max_batch_tokens, auto, self.loaded.model.num_parameters())

    def auto_batch_tokens(self, capture: bool) -> int:
        """Padded tokens per forward that fit in a share of the accelerator's free memory: activations, KV cache,
        captured rows and float64 label log-probs, estimated from the model's config (at least one full context)."""
        if capture not in self._auto_tokens:
            free, _ = torch.cuda.mem_get_info(self.loaded.device)
            per_token = forward_bytes_per_token(self.loaded, capture)
            self._auto_tokens[capture] = tokens_for_memory(free, per_token, self.context_length)
        return self._auto_tokens[capture]

    def _score_rows(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], capture: bool
    ) -> list[LabelScores]:
        """`_score_batch`, split in two and retried when the accelerator runs out of memory."""
        try:
            return self._score_batch(prompts, continuations, capture)
        except torch.cuda.OutOfMemoryError:
            if len(prompts) == 1:
                raise
            log.warning("out of accelerator memory on a batch of %d prompts; splitting it in two", len(prompts))
            torch.cuda.empty_cache()
            half = len(prompts) // 2
            return (self._score_rows(prompts[:half], continuations, capture)
                    + self._score_rows(prompts[half:], continuations, capture))

    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask, both (batch, longest) long, on the model's device."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(self.loaded.device), mask.to(self.loaded.device)

    def _score_batch(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], capture: bool
    ) -> list[LabelScores]:
        """One prompt forward (logits only at each row's last token), then each label's remaining tokens."""
        model = self.loaded.model
        ids, mask = self._pad(prompts)  # (b, T)
        last = mask.sum(1) - 1  # (b,) prediction position
        multi = any(len(c) > 1 for c in continuations)
        with _capture_attention(model, last) if capture else nullcontext() as cap:
            out = model(input_ids=ids, attention_mask=mask, use_cache=multi, logits_to_keep=last[:, None])
        # float64: torch's float32 log_softmax on CPU is off by up to 1e-4 over Gemma 3's 262k-token vocabulary
        first = torch.log_softmax(out.logits[:, 0].double(), dim=-1)  # (b, V)
        cache = out.cache if multi else None
        tails: dict[tuple[int, ...], torch.Tensor] = {}  # labels with the same leading tokens share one tail pass
        lp = torch.stack([self._label_log_prob(first, c, prompts, mask, cache, tails) for c in continuations], 1)
        lp = lp.cpu().numpy()  # (b, L) float64
        rows = cap.rows().cpu().numpy() if capture else None  # (b, layers, heads, T)
        return [
            LabelScores(lp[i], None if rows is None else np.ascontiguousarray(rows[i, :, :, : len(p)]))
            for i, p in enumerate(prompts)
        ]

    def _label_log_prob(
        self, first: torch.Tensor, cont: Sequence[int], prompts: Sequence[Sequence[int]], mask: torch.Tensor,
        cache: Any, tails: dict[tuple[int, ...], torch.Tensor],
    ) -> torch.Tensor:
        """Summed log-prob of one continuation for every row: (b,); `tails` memoises log-probs per leading tokens."""
        total = first[:, cont[0]]  # (b,)
        if len(cont) == 1:
            return total
        key = tuple(cont[:-1])
        if key not in tails:
            if self.share_prompt_cache and _croppable(cache, mask.shape[1] + len(cont) - 1):
                logits = self._tail_logits_cached(cont, mask, cache)
            else:
                logits = self._tail_logits_full(cont, prompts)
            tails[key] = torch.log_softmax(logits.double(), dim=-1)  # (b, m-1, V), float64 as `first`
        targets = torch.as_tensor(list(cont[1:]), device=first.device).expand(first.shape[0], -1)  # (b, m-1)
        return total + tails[key].gather(-1, targets[..., None]).squeeze(-1).sum(-1)

    def _tail_logits_cached(self, cont: Sequence[int], mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits after continuation tokens 0..m-2, appended to the prompt's KV cache, then cropped: (b, m-1, V)."""
        b, n = mask.shape[0], len(cont) - 1
        tail = torch.as_tensor(list(cont[:-1]), device=mask.device).expand(b, -1)  # (b, m-1)
        positions = mask.sum(1, keepdim=True) + torch.arange(n, device=mask.device)  # (b, m-1), after each row's prompt
        full_mask = torch.cat([mask, torch.ones_like(tail)], dim=1)  # (b, T + m-1): padding holes stay masked
        small = b * n <= _SMALL_PASS_TOKENS  # hundreds of tiny ops: faster on one thread when cores are shared
        with one_cpu_thread(mask.device) if small else nullcontext():
            out = self.loaded.model(
                input_ids=tail, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True
            )
        cache.crop(-n)
        return out.logits

    def _tail_logits_full(self, cont: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Same as the cached path with one forward over prompt + continuation tokens 0..m-2: (b, m-1, V)."""
        ids, mask = self._pad([list(p) + list(cont[:-1]) for p in prompts])
        n = len(cont) - 1
        starts = torch.as_tensor([len(p) for p in prompts], device=ids.device)[:, None]  # (b, 1)
        keep = starts + torch.arange(n, device=ids.device)  # (b, m-1): where tokens 0..m-2 sit
        return self.loaded.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits


def tokens_for_memory(free_bytes: int, bytes_per_token: int, context_length: int) -> int:
    """Padded tokens per forward that fit a share of `free_bytes`, at least one full context, at most the cap.

    >>> tokens_for_memory(8 * 2**30, 200_000, 2048), tokens_for_memory(2**20, 200_000, 2048)
    (21474, 2048)
    """
    budget = int(_FREE_MEMORY_SHARE * free_bytes / bytes_per_token)
    return max(context_length, min(budget, _MAX_AUTO_BATCH_TOKENS))


def forward_bytes_per_token(loaded: LoadedModel, capture: bool) -> int:
    """Accelerator bytes one padded token of a scoring forward may hold at its peak: a layer's activations (residual
    stream, attention projections, MLP), every layer's KV cache, the captured rows (float32 per layer and head), and
    its share of the (rows, vocabulary) logits and float64 log-probs for prompts of 16 tokens or more."""
    config = loaded.model.config.get_text_config()
    width = config.hidden_size
    mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * width
    head_dim = getattr(config, "head_dim", None) or width // config.num_attention_heads
    kv = 2 * loaded.n_layers * (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim
    size = next(loaded.model.parameters()).element_size()
    per_token = size * (8 * width + 4 * mlp + kv) + (4 * loaded.n_layers * loaded.n_heads if capture else 0)
    return per_token + 20 * config.vocab_size // 16  # logits, their float64 copy and its log-softmax, per row


def _croppable(cache: Any, length: int) -> bool:
    """True when the cache, grown to `length` slots (padded prompt + label tail), gives the tail the same attention
    as a full forward and crop() undoes the append exactly: every layer plain, or sliding-window (Gemma 3) with
    `length` under its window. Past the window such a layer has dropped keys, and its window counts cache slots,
    which with right padding are not each row's positions; then the runner does full forwards instead."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    def exact(layer: Any) -> bool:
        if type(layer) is DynamicSlidingWindowLayer:
            return length < layer.sliding_window
        return type(layer) is DynamicLayer

    return isinstance(cache, DynamicCache) and all(exact(layer) for layer in cache.layers)
