"""Prompts: a template and a label format turn demonstrations and a query into text, token ids and token spans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..data.examples import Example
from ..data.tasks import TaskSpec
from ..errors import RiclError

Span = tuple[int, int]  # [start, end) in tokens (or characters, before tokenisation)


@dataclass
class Prompt:
    """A tokenised prompt that ends right before the label; spans index `token_ids`, end exclusive.

    The preamble (the sink token, then the instruction line if the template has one) belongs to no demonstration:
    causal LMs park much of their spare attention on the first token, so no x_i or y_i span may include it.
    """

    text: str
    token_ids: list[int]
    demo_ids: list[int]  # the demonstrations used, in prompt order
    preamble_span: Span  # starts at token 0: the sink token (BOS), then the instruction line, if any
    x_spans: list[Span]  # tokens of each demonstration's input x_i
    y_spans: list[Span]  # tokens of each demonstration's label y_i (label prefix included where it merges)
    query_span: Span
    n_demos_requested: int
    dropped_ids: list[int] = field(default_factory=list)  # dropped to fit the budget or context, least relevant first

    @property
    def n_demos_used(self) -> int:
        return len(self.demo_ids)

    @property
    def prediction_position(self) -> int:
        """The last prompt token: its next-token distribution scores the labels."""
        return len(self.token_ids) - 1


class PromptBuilder:
    """Writes `instruction`, then each demo as `input<sep>output<label_prefix><label>`, then the query without label."""

    def __init__(self, task: TaskSpec, label_format: str = "default", tokenizer=None,
                 context_length: int | None = None):
        self.task = task
        self.template = task.template
        self.label_format = label_format
        self.label_words = task.label_words(label_format)
        self.tokenizer = tokenizer
        self.context_length = context_length

    def render_input(self, texts: Sequence[str]) -> str:
        return self.template.input.format(**dict(zip(self.task.text_fields, texts)))

    def render(self, demos: Sequence[Example], query_texts: Sequence[str]) -> tuple[str, list[Span], list[Span], Span]:
        """The prompt text and the character spans of every x_i, y_i and of the query input."""
        t = self.template
        parts: list[str] = [t.instruction + t.demo_separator] if t.instruction else []
        x_chars: list[Span] = []
        y_chars: list[Span] = []
        pos = len(parts[0]) if parts else 0
        for demo in demos:
            x = self.render_input(demo.texts)
            head = x + t.input_output_separator + t.output + t.label_prefix
            label = self.label_words[demo.label]
            x_chars.append((pos, pos + len(x)))
            y_chars.append((pos + len(head), pos + len(head) + len(label)))
            piece = head + label + t.demo_separator
            parts.append(piece)
            pos += len(piece)
        q = self.render_input(query_texts)
        parts.append(q + t.input_output_separator + t.output)
        return "".join(parts), x_chars, y_chars, (pos, pos + len(q))

    def build(self, demos: Sequence[Example], query_texts: Sequence[str], scores: Sequence[float] | None = None,
              reserve: int = 0, budget: int | None = None, none_fit_ok: bool = False) -> Prompt:
        """The prompt with every demonstration when it fits: at most `budget` tokens (when given) and `reserve` tokens
        left of context_length (when set). Otherwise the demonstrations kept greedily (see `_greedy`). A budget with no
        room for any demonstration is an error, or, with `none_fit_ok`, the prompt without demonstrations."""
        if self.tokenizer is None:
            raise RiclError("PromptBuilder needs a tokenizer to build token ids; pass tokenizer=")
        check_budget(budget)
        full = self._tokenise(demos, query_texts)
        if self._fits(len(full.token_ids), reserve, budget):
            return full  # the common path: one tokenisation
        return self._greedy(demos, query_texts, scores, reserve, budget, full, none_fit_ok)

    def _fits(self, n: int, reserve: int, budget: int | None) -> bool:
        within_context = self.context_length is None or n + reserve <= self.context_length
        return (budget is None or n <= budget) and within_context

    def _greedy(self, demos: Sequence[Example], query_texts: Sequence[str], scores: Sequence[float] | None,
                reserve: int, budget: int | None, full: Prompt, none_fit_ok: bool = False) -> Prompt:
        """Try the demonstrations most relevant first (highest score; without scores, later ones, which sit nearer the
        query; ties go to the later one) and keep each that still fits beside the ones kept; kept ones keep their prompt
        order, `dropped_ids` lists the others least relevant first.

        Where demonstrations tokenise independently (`_separated`), each one's tokens are counted once, in the full
        prompt, and the kept ones' prompt is tokenised once to confirm the count: three tokenizer calls, not one per
        candidate. Otherwise (or when the confirmed count differs from the sum) every candidate is tried exactly."""
        bare = self._tokenise([], query_texts)
        if self.context_length is not None and len(bare.token_ids) + reserve > self.context_length:
            raise RiclError(f"the query alone needs {len(bare.token_ids) + reserve} tokens, more than the "
                            f"model's context of {self.context_length}")
        sims = list(scores) if scores is not None else list(range(len(demos)))
        order = sorted(range(len(demos)), key=lambda i: (sims[i], i), reverse=True)
        kept, prompt = None, None
        if self._separated:
            cost = np.diff([x[0] for x in full.x_spans] + [full.query_span[0]])  # (k,) tokens of each, separator too
            fixed = len(full.token_ids) - int(cost.sum())
            kept = self._kept(order, lambda chosen: fixed + int(cost[chosen].sum()), reserve, budget)
            prompt = self._tokenise([demos[j] for j in kept], query_texts)
            if len(prompt.token_ids) != fixed + int(cost[kept].sum()):
                kept = None  # the pieces did not tokenise independently after all
        if kept is None:
            kept = self._kept(order, lambda chosen: self._count([demos[j] for j in chosen], query_texts), reserve,
                              budget)
            prompt = self._tokenise([demos[j] for j in kept], query_texts)
        if budget is not None and not kept and not none_fit_ok:
            shortest = min((self._count([d], query_texts) for d in demos), default=None)
            raise RiclError(self._no_room(budget, reserve, len(bare.token_ids), shortest))
        prompt.n_demos_requested = len(demos)
        prompt.dropped_ids = [demos[i].id for i in reversed(order) if i not in set(kept)]
        return prompt

    @property
    def _separated(self) -> bool:
        """Whether demonstrations tokenise independently of their neighbours: a separator between them and an input
        that starts with literal text ("Input: "), so no token spans two of them whichever are kept."""
        return bool(self.template.demo_separator) and not self.template.input.startswith("{")

    def _kept(self, order: list[int], count: Callable[[list[int]], int], reserve: int, budget: int | None) -> list[int]:
        """The greedy rule over `order` with `count(sorted demo positions) -> tokens`: the kept positions, sorted."""
        kept: list[int] = []
        for i in order:
            trial = sorted([*kept, i])
            if self._fits(count(trial), reserve, budget):
                kept = trial
        return kept

    def _count(self, demos: Sequence[Example], query_texts: Sequence[str]) -> int:
        """Tokens of the prompt with these demonstrations (no spans: a count only)."""
        return len(tokenise_with_sink(self.tokenizer, self.render(demos, query_texts)[0])[0])

    def _no_room(self, budget: int, reserve: int, bare: int, shortest: int | None) -> str:
        message = (f"max_tokens={budget} leaves no room for a demonstration: the prompt without demonstrations "
                   f"takes {bare} tokens")
        if shortest is not None:
            message += f" and the shortest with one demonstration {shortest}"
        if self.context_length is not None and self.context_length - reserve < budget:
            message += (f" (the model's context of {self.context_length} tokens, {reserve} kept for the label, "
                        f"allows {self.context_length - reserve})")
        return message

    def check_label_tokens(self, continuations: Sequence[Sequence[int]]) -> None:
        """Refuse labels whose scored tokens differ from the tokens they have inside a demonstration (a SentencePiece
        tokenizer may split off a lone "▁", or merge the label into the separator): the kernel reads the latter."""
        blank = tuple("x" for _ in self.task.text_fields)
        demos = [Example(-1 - j, blank, j) for j in range(len(self.label_words))]
        text, _, y_chars, _ = self.render(demos, blank)
        token_ids, offsets = tokenise_with_sink(self.tokenizer, text)
        prefix = len(self.template.label_prefix)  # the scored continuation is label_prefix + word
        for word, (a, b), scored in zip(self.label_words, y_chars, continuations):
            start, end = char_to_token_span(offsets, (a - prefix, b))
            in_demo = token_ids[start:end]
            if list(scored) != in_demo:
                raise RiclError(
                    f"label {word!r} is scored as tokens {list(scored)} ({self._pieces(scored)}) but appears in a "
                    f"demonstration as {in_demo} ({self._pieces(in_demo)}); expected the same tokens: change the "
                    f"label format or the template's label_prefix {self.template.label_prefix!r}")

    def _pieces(self, ids: Sequence[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(list(ids))

    def _tokenise(self, demos: Sequence[Example], query_texts: Sequence[str]) -> Prompt:
        text, x_chars, y_chars, q_chars = self.render(demos, query_texts)
        token_ids, offsets = tokenise_with_sink(self.tokenizer, text)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # (T, 2): converted once for every span
        first = x_chars[0][0] if x_chars else q_chars[0]  # where the first demonstration (or the query) starts
        return Prompt(
            text=text,
            token_ids=token_ids,
            demo_ids=[d.id for d in demos],
            preamble_span=(0, char_to_token_span(offsets, (first, first + 1))[0]),
            x_spans=[char_to_token_span(offsets, s) for s in x_chars],
            y_spans=[char_to_token_span(offsets, s) for s in y_chars],
            query_span=char_to_token_span(offsets, q_chars),
            n_demos_requested=len(demos),
        )


def check_budget(budget: Any) -> None:
    """Refuse a token budget that is not a positive integer."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise RiclError(f"max_tokens must be a positive integer, got {budget!r}")


def sink_token_id(tokenizer: Any) -> int:
    """The token a prompt starts with when the tokenizer adds none: its BOS, else its EOS (GPT-2 style documents)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise RiclError(f"{type(tokenizer).__name__} has neither a BOS nor an EOS token; a prompt needs a leading token "
                    "that belongs to no demonstration (the attention sink)")


def tokenise_with_sink(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, starting with exactly one special token: the tokenizer's own BOS
    when it adds one (Gemma, Llama), else `sink_token_id` prepended (SmolLM2, GPT-J add nothing)."""
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if ids and offsets[0][1] <= offsets[0][0] and ids[0] in tokenizer.all_special_ids:
        return ids, offsets
    return [sink_token_id(tokenizer), *ids], [(0, 0), *offsets]


def char_to_token_span(offsets: Sequence[tuple[int, int]], chars: Span) -> Span:
    """The tokens whose characters overlap [start, end); special tokens (empty offsets) never do."""
    start, end = chars
    a, b = np.asarray(offsets, dtype=np.int64).reshape(-1, 2).T  # (T,) each: one scan in numpy, not in Python
    hits = np.flatnonzero((b > a) & (a < end) & (b > start))
    if not len(hits):
        raise RiclError(f"no token covers characters {start}..{end}; "
                        "the tokenizer must give offsets (a fast tokenizer)")
    return int(hits[0]), int(hits[-1]) + 1
