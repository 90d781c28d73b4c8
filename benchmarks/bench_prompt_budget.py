"""The token-budget packer (`PromptBuilder.build(..., budget=N)`, what `select(max_tokens=N)` runs): ours, which
counts each demonstration's tokens once in the full prompt and confirms the kept ones' prompt with one more
tokenisation, against the rule it replaced, which re-tokenised the whole prompt for every candidate and scanned
every token's offsets in Python for every span (kept below, verbatim in effect, as the baseline).

Cases: k = 64 demonstrations of about 1,000 tokens each (AG News test articles joined), and the service's everyday
case, k = 8 SST-2 sentences; the budget is half the full prompt, so about half the demonstrations are dropped. Both
packers must keep the same demonstrations with the same token count; each case runs under both packaged tokenizers.

    python benchmarks/bench_prompt_budget.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from common import DATA, interleave, print_machine, print_table, timing_rows

from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_task
from retrieval_icl.lm.models import load_tokenizer_and_config
from retrieval_icl.lm.prompts import Prompt, PromptBuilder, tokenise_with_sink


def old_span(offsets: Sequence[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int]:
    """The span lookup before: every token's offsets scanned in Python."""
    start, end = chars
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    return hits[0], hits[-1] + 1


def old_tokenise(builder: PromptBuilder, demos: Sequence[Example], query: Sequence[str]) -> Prompt:
    """PromptBuilder._tokenise before: the same prompt, with the Python span scan."""
    text, x_chars, y_chars, q_chars = builder.render(demos, query)
    ids, offsets = tokenise_with_sink(builder.tokenizer, text)
    first = x_chars[0][0] if x_chars else q_chars[0]
    return Prompt(text=text, token_ids=ids, demo_ids=[d.id for d in demos],
                  preamble_span=(0, old_span(offsets, (first, first + 1))[0]),
                  x_spans=[old_span(offsets, s) for s in x_chars], y_spans=[old_span(offsets, s) for s in y_chars],
                  query_span=old_span(offsets, q_chars), n_demos_requested=len(demos))


def old_build(builder: PromptBuilder, demos: Sequence[Example], query: Sequence[str], scores: Sequence[float],
              budget: int) -> Prompt:
    """The greedy packer before: one whole-prompt tokenisation (with spans) per candidate."""
    full = old_tokenise(builder, demos, query)
    if len(full.token_ids) <= budget:
        return full
    order = sorted(range(len(demos)), key=lambda i: (scores[i], i), reverse=True)
    kept: list[int] = []
    prompt = old_tokenise(builder, [], query)
    for i in order:
        trial = old_tokenise(builder, [demos[j] for j in sorted([*kept, i])], query)
        if len(trial.token_ids) <= budget:
            kept, prompt = sorted([*kept, i]), trial
    return prompt


def long_demos(tokenizer, k: int, tokens: int) -> list[Example]:
    """k AG News demonstrations of about `tokens` tokens each: consecutive test articles joined."""
    rows = [json.loads(line) for line in (DATA / "agnews" / "test.jsonl").open()]
    demos, parts, row = [], [], 0
    while len(demos) < k:
        parts.append(rows[row]["text"])
        row += 1
        if len(tokenizer(" ".join(parts))["input_ids"]) >= tokens:
            demos.append(Example(len(demos), (" ".join(parts),), rows[row - 1]["label"]))
            parts = []
    return demos


def short_demos(k: int) -> list[Example]:
    rows = [json.loads(line) for line in (DATA / "sst2" / "validation.jsonl").open()][:k + 1]
    return [Example(i, (r["sentence"],), r["label"]) for i, r in enumerate(rows[:k])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_machine()
    for model in ("smollm2-135m", "gemma3-270m"):
        tokenizer = load_tokenizer_and_config(model).tokenizer
        cases = {"k=64 x ~1000 tokens (agnews)": ("agnews", long_demos(tokenizer, 64, 1000), "a query about markets"),
                 "k=8 sst2 sentences": ("sst2", short_demos(8), "a gorgeous, witty film")}
        for name, (task, demos, query) in cases.items():
            builder = PromptBuilder(load_task(task), tokenizer=tokenizer)
            scores = [((7 * i) % len(demos)) / len(demos) for i in range(len(demos))]  # a mixed relevance order
            budget = len(builder.build(demos, (query,)).token_ids) // 2
            timings, results = interleave({
                "before (a tokenisation per candidate)": lambda _: old_build(builder, demos, (query,), scores, budget),
                "ours": lambda _: builder.build(demos, (query,), scores, budget=budget)}, repeats=args.repeats)
            before, ours = (r[0] for r in results.values())
            same = before.demo_ids == ours.demo_ids and before.token_ids == ours.token_ids
            print(f"\n### {model}, {name}: budget {budget} tokens, {len(ours.demo_ids)} of {len(demos)} kept, "
                  f"same prompt as before: {same}")
            print_table(timing_rows(timings, "before (a tokenisation per candidate)", unit="prompt"))
            if not same:
                raise SystemExit("the packers disagree")


if __name__ == "__main__":
    main()
