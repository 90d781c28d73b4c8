"""A deterministic stand-in for a causal LM, so the compare pipeline runs in tests without model weights.

`VoteScorer` scores each label by how often the label's first token occurs in the prompt (demonstrations' labels
vote; nothing else in the tiny data uses the label words), log-softmaxed; ties go to the lower label id. Its
attention rows put twice the weight on those label tokens as on any other token. The tokenizer is a byte-level
BPE like GPT-J's, trained in-process on the tiny data, so nothing is downloaded or converted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval_icl.lm.scoring import LabelScores, Scorer, ScoreRequest

TINY_DATA = Path(__file__).resolve().parent / "data"


def byte_level_tokenizer(texts: list[str], vocab_size: int = 2000) -> Any:
    """A byte-level BPE tokenizer like GPT-J's (GPT-2's), trained on `texts`: adds no BOS, `<|endoftext|>` is its
    only special token (BOS, EOS and padding). GPT-J's own cannot be downloaded offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def tiny_tokenizer() -> Any:
    """`byte_level_tokenizer` trained on tests/data's texts and the label words of the tiny tasks."""
    texts = [" ".join(str(v) for v in json.loads(line).values()) for path in sorted(TINY_DATA.rglob("*.jsonl"))
             for line in path.read_text().splitlines()]
    texts += ["Input: Output: negative positive bad good apple river entailment neutral contradiction A B C"] * 5
    return byte_level_tokenizer(texts)


class VoteScorer(Scorer):
    """Label log-probs from label-token votes in the prompt; attention rows favouring label tokens. Counts its calls."""

    def __init__(self, tokenizer: Any, n_layers: int = 2, n_heads: int = 3, context_length: int = 1024) -> None:
        self._tokenizer, self._context_length = tokenizer, context_length
        self.n_layers, self.n_heads = n_layers, n_heads
        self.score_calls: list[int] = []  # prompts per `score` call
        self.many_calls: list[int] = []  # requests per `score_many` call

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def context_length(self) -> int:
        return self._context_length

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
              capture_attention: bool = False, show_progress: bool = False) -> list[LabelScores]:
        self.check_inputs(prompts, continuations)
        self.score_calls.append(len(prompts))
        firsts = [c[0] for c in continuations]
        return [LabelScores(votes_log_probs(p, firsts), self._row(p, firsts) if capture_attention else None)
                for p in prompts]

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[list[LabelScores]]:
        self.many_calls.append(len(requests))
        return super().score_many(requests)

    def _row(self, prompt: Sequence[int], firsts: list[int]) -> np.ndarray:
        """(layers, heads, T) float32 rows summing to 1: weight 2 on label tokens, 1 elsewhere."""
        weights = np.where(np.isin(np.asarray(prompt), firsts), 2.0, 1.0)
        row = (weights / weights.sum()).astype(np.float32)
        return np.broadcast_to(row, (self.n_layers, self.n_heads, len(prompt))).copy()


def votes_log_probs(prompt: Sequence[int], firsts: list[int]) -> np.ndarray:
    """log-softmax over labels of how often each label's first token occurs in the prompt."""
    counts = np.array([list(prompt).count(t) for t in firsts], dtype=np.float64)
    return counts - (counts.max() + np.log(np.exp(counts - counts.max()).sum()))
