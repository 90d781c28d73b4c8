"""Token budgets: the most relevant whole demonstrations that fit N tokens of the rendered prompt, counted with the
packaged tokenizers (SmolLM2 adds no BOS, Gemma 3 adds one), over random pools, queries and budgets.

Every count here is made independently of the library: the prompt is written out by hand from the template
(`Input: x\\nOutput: label` blocks joined by a blank line) and tokenised with the tokenizer's own call."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_task
from retrieval_icl.errors import RiclError
from retrieval_icl.lm.models import load_tokenizer_and_config
from retrieval_icl.lm.prompts import PromptBuilder
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.serving.demo_selector import DemoSelector, SelectedExample

pytestmark = pytest.mark.lm  # loads the packaged tokenizers (no weights once the models are converted)

DIM = 8
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCXYZ éüñ,.!?'-0123456789"
# Index kinds: (manifest task, text field, label names in the manifest, the label words the prompt shows)
KINDS = [("sst2", "sentence", ["negative", "positive"], ["negative", "positive"]),
         ("reviews", "review", ["bad", "good"], ["bad", "good"]),
         (None, "text", None, ["0", "1"])]
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

texts = st.text(ALPHABET, min_size=1, max_size=120).map(lambda t: " ".join(t.split())).filter(bool)
pools = st.lists(st.tuples(texts, st.integers(0, 1)), min_size=2, max_size=7, unique_by=lambda row: row[0])


def budgets(shortest: int, full: int) -> st.SearchStrategy[int]:
    """Any budget up to past the whole prompt, often one where some but not all demonstrations fit, or a huge one."""
    partial = [st.sampled_from(range(shortest, full))] if shortest < full else []
    return st.one_of(st.integers(1, full + 5), *partial, st.just(10**6))


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def tokenizer(request):
    return load_tokenizer_and_config(request.param).tokenizer


def token_count(tokenizer, text: str) -> int:
    """Tokens a causal LM reads for `text`: the tokenizer's own ids plus the sink token when it adds no BOS."""
    ids = tokenizer(text)["input_ids"]
    return len(ids) + (0 if ids and ids[0] == tokenizer.bos_token_id else 1)


def written(demos: list[tuple[str, str]], query: str) -> str:
    """The prompt written out by hand: (text, label word) demonstrations, then the query."""
    return "\n\n".join([f"Input: {x}\nOutput: {y}" for x, y in demos] + [f"Input: {query}\nOutput:"])


class HashEmbedder:
    """A stand-in sentence model for queries: a unit vector seeded by the text's hash (no encoder time)."""

    def get_embedding_dimension(self) -> int:
        return DIM

    def encode(self, texts, **kwargs) -> np.ndarray:
        rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=DIM)
                for t in texts]
        return np.asarray([r / np.linalg.norm(r) for r in rows], dtype=np.float32)


def index_of(pool: list[tuple[str, int]], kind: tuple, seed: int) -> DemoIndex:
    """A real DemoIndex over the pool with given embeddings, built as the application tests build theirs."""
    task, field, names, _ = kind
    examples = [Example(10 + i, (text,), label) for i, (text, label) in enumerate(pool)]
    vectors = np.random.default_rng(seed).normal(size=(len(pool), DIM)).astype(np.float32)
    encoder = Encoder(loaded_model=HashEmbedder(), use_cache=False)
    return DemoIndex(encoder).build(examples, task=task, label_names=names, text_fields=[field], embeddings=vectors)


queries = texts.map(lambda t: "q: " + t)  # pool texts hold no colon, so no pool example is the query itself
strategies = st.sampled_from(["knn", "random", "mmr"])  # random and mmr orders differ from the relevance order


@SETTINGS
@given(pool=pools, kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16), strategy=strategies, query=queries,
       data=st.data())
def test_selected_demonstrations_fit_whole_and_in_prompt_order(tokenizer, pool, kind, seed, strategy, query, data):
    selector = DemoSelector(index_of(pool, kind, seed), strategy=strategy, tokenizer=tokenizer)
    words = kind[3]

    def count(chosen: list[SelectedExample]) -> int:
        return token_count(tokenizer, written([(c.fields[kind[1]], words[c.label]) for c in chosen], query))

    k = data.draw(st.sampled_from(range(len(pool), 0, -1)), label="k")
    everything = selector.select(query, k)
    budget = data.draw(budgets(min(count([c]) for c in everything), count(everything)), label="max_tokens")
    try:
        kept = selector.select(query, k, max_tokens=budget)
    except RiclError as error:
        singles = [count([c]) for c in everything]
        event("refused: no demonstration fits")
        assert min(singles) > budget, "refused although one demonstration fits"
        assert str(error) == (f"max_tokens={budget} leaves no room for a demonstration: the prompt without "
                              f"demonstrations takes {count([])} tokens and the shortest with one demonstration "
                              f"{min(singles)}")
        return
    kept_ids = {c.id for c in kept}
    assert kept and kept == [c for c in everything if c.id in kept_ids]  # whole, unchanged, in prompt order
    assert all(c.fields == {kind[1]: pool[c.id - 10][0]} for c in kept)
    assert count(kept) <= budget and selector.prompt_tokens(query, kept) == count(kept)
    for dropped in (c for c in everything if c.id not in kept_ids):
        with_it = [c for c in everything if c.id in kept_ids or c.id == dropped.id]
        assert count(with_it) > budget, f"demonstration {dropped.id} was dropped but fits"
    event("all kept" if len(kept) == len(everything) else "some dropped")
    if count(everything) <= budget:
        assert kept == everything


scores_of = st.sampled_from([0.1, 0.5, 0.5, 0.9])  # ties are likely


@SETTINGS
@given(pool=pools, query=queries, with_scores=st.booleans(), reserve=st.integers(0, 3), data=st.data())
def test_build_keeps_exactly_what_the_greedy_rule_keeps(tokenizer, pool, query, with_scores, reserve, data):
    demos = [Example(i, (text,), label) for i, (text, label) in enumerate(pool)]
    scores = data.draw(st.lists(scores_of, min_size=len(demos), max_size=len(demos)), "scores") if with_scores else None
    words = ["negative", "positive"]

    def count(chosen: list[Example]) -> int:
        return token_count(tokenizer, written([(d.texts[0], words[d.label]) for d in chosen], query))

    def relevance(d: Example) -> tuple:  # highest score first, ties (and no scores) to the later demonstration
        return (scores[d.id] if scores is not None else 0, d.id)

    full, bare = count(demos), count([])
    budget = data.draw(st.none() | budgets(min(count([d]) for d in demos), full), "budget")
    contexts = st.sampled_from(range(max(1, bare - 2), full + 8))  # a few too short for the query alone
    context = data.draw(contexts if budget is None else st.none() | contexts, "context")
    limit = min(budget or 10**9, context - reserve if context is not None else 10**9)
    builder = PromptBuilder(load_task("sst2"), tokenizer=tokenizer, context_length=context)
    try:
        prompt = builder.build(demos, (query,), scores, reserve=reserve, budget=budget)
    except RiclError as error:
        too_long = context is not None and count([]) + reserve > context
        assert too_long or (budget is not None and all(count([d]) > limit for d in demos)), str(error)
        assert ("the query alone needs" if too_long else "leaves no room for a demonstration") in str(error)
        event("refused: " + ("the query alone is over the context" if too_long else "no demonstration fits"))
        return
    kept = [d for d in demos if d.id in prompt.demo_ids]
    assert prompt.demo_ids == [d.id for d in kept]
    assert prompt.text == written([(d.texts[0], words[d.label]) for d in kept], query)
    assert len(prompt.token_ids) == count(kept) <= limit
    for d in demos:  # kept exactly when it fits beside the kept ones more relevant than it
        before = [e for e in kept if relevance(e) > relevance(d)]
        fits = count(sorted([*before, d], key=lambda e: e.id)) <= limit
        assert fits == (d.id in prompt.demo_ids), f"demonstration {d.id}: fits {fits}"
    assert prompt.dropped_ids == sorted((d.id for d in demos if d not in kept), key=lambda i: relevance(demos[i]))
    assert prompt.n_demos_requested == len(demos)
    event("all kept" if len(kept) == len(demos) else "none kept" if not kept else "some dropped")


def test_a_large_budget_changes_nothing(tokenizer):
    demos = [Example(i, (f"review number {i}, a fine film",), i % 2) for i in range(5)]
    builder = PromptBuilder(load_task("sst2"), tokenizer=tokenizer)
    plain = builder.build(demos, ("what a ride",), scores=[0.3, 0.1, 0.9, 0.5, 0.2])
    assert builder.build(demos, ("what a ride",), [0.3, 0.1, 0.9, 0.5, 0.2], budget=len(plain.token_ids)) == plain
    assert plain.dropped_ids == [] and plain.n_demos_used == 5


def test_a_budget_below_one_demonstration_is_one_clear_error(tokenizer):
    demos = [Example(0, ("a long and winding review " * 4,), 1), Example(1, ("short",), 0)]
    builder = PromptBuilder(load_task("sst2"), tokenizer=tokenizer)
    bare = token_count(tokenizer, written([], "what a ride"))
    shortest = token_count(tokenizer, written([("short", "negative")], "what a ride"))
    for budget in (shortest - 1, bare, 1):
        with pytest.raises(RiclError) as error:
            builder.build(demos, ("what a ride",), budget=budget)
        assert str(error.value) == (f"max_tokens={budget} leaves no room for a demonstration: the prompt without "
                                    f"demonstrations takes {bare} tokens and the shortest with one demonstration "
                                    f"{shortest}")
    assert builder.build(demos, ("what a ride",), budget=shortest).demo_ids == [1]
    none = builder.build(demos, ("what a ride",), scores=[0.9, 0.2], budget=shortest - 1, none_fit_ok=True)
    assert (none.demo_ids, none.dropped_ids, len(none.token_ids)) == ([], [1, 0], bare)
    for bad in (0, -3, True, 2.5, "40"):
        with pytest.raises(RiclError, match="max_tokens must be a positive integer"):
            builder.build(demos, ("what a ride",), budget=bad)


def test_a_budget_tighter_than_the_context_says_what_the_context_allows(tokenizer):
    demos = [Example(0, ("a gorgeous, witty film",), 1)]
    builder = PromptBuilder(load_task("sst2"), tokenizer=tokenizer, context_length=14)
    with pytest.raises(RiclError, match=r"max_tokens=40 leaves no room .* \(the model's context of 14 tokens, 2 kept "
                                        r"for the label, allows 12\)"):
        builder.build(demos, ("fun",), reserve=2, budget=40)


class CountingTokenizer:
    """The real tokenizer, counting its calls and the characters it was given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls, self.chars = tokenizer, 0, 0

    def __call__(self, text, **kwargs):
        self.calls, self.chars = self.calls + 1, self.chars + len(text)
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_the_packer_tokenises_a_handful_of_times_not_once_per_candidate(tokenizer):
    demos = [Example(i, (f"review {i}: " + "a fine, long and careful film " * (1 + i % 5),), i % 2) for i in range(40)]
    counting = CountingTokenizer(tokenizer)
    builder = PromptBuilder(load_task("sst2"), tokenizer=counting)
    full = builder.build(demos, ("what a ride",))
    scores = [(7 * i % 40) / 40 for i in range(40)]
    counting.calls = counting.chars = 0
    prompt = builder.build(demos, ("what a ride",), scores, budget=len(full.token_ids) // 2)
    assert 0 < prompt.n_demos_used < 40
    assert counting.calls == 3  # the full prompt, the bare query, the kept ones: not 40 trials
    assert counting.chars < 2.5 * len(full.text)
    assert len(prompt.token_ids) == token_count(tokenizer, prompt.text) <= len(full.token_ids) // 2


def test_a_template_whose_pieces_merge_still_keeps_exactly_the_greedy_choice(tokenizer):
    """No separators: a label and the next input share tokens, so counts are not additive and every candidate is
    tried exactly (the slow path), with the same rule: kept when it fits beside the more relevant kept ones."""
    from retrieval_icl.data.tasks import PromptTemplate, TaskSpec

    task = TaskSpec(name="glued", text_fields=["text"], label_names=["no", "yes"],
                    template=PromptTemplate(input="{text}", output="", input_output_separator="", label_prefix="",
                                            demo_separator=""))
    rng = np.random.default_rng(0)
    words = ["ab", "yesno", "so", "nos", "es", "ye", "o", "n"]
    for trial in range(40):
        demos = [Example(i, ("".join(rng.choice(words, size=rng.integers(1, 4))),), int(rng.integers(2)))
                 for i in range(6)]
        builder = PromptBuilder(task, tokenizer=tokenizer)
        scores = [float(s) for s in rng.permutation(6)]

        def count(kept: list[Example]) -> int:
            return token_count(tokenizer, "".join(d.texts[0] + ["no", "yes"][d.label] for d in kept) + "qq")

        budget = int(rng.integers(count([]) + 1, count(demos) + 1))
        try:
            prompt = builder.build(demos, ("qq",), scores, budget=budget)
        except RiclError:
            assert all(count([d]) > budget for d in demos)
            continue
        kept = [d for d in demos if d.id in prompt.demo_ids]
        assert len(prompt.token_ids) == count(kept) <= budget
        for d in demos:
            before = [e for e in kept if scores[e.id] > scores[d.id]]
            fits = count(sorted([*before, d], key=lambda e: e.id)) <= budget
            assert fits == (d in kept), f"trial {trial}, demonstration {d.id}"
