"""The LangChain adapter inside a real FewShotPromptTemplate, sync and async, backed by a saved index."""

import asyncio

import pytest
from langchain_core.example_selectors import BaseExampleSelector
from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.integrations.langchain import RiclExampleSelector
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder

REVIEWS = [("a dull, lifeless film", 0), ("slow and boring from start to finish", 0), ("a joyous, moving triumph", 1),
           ("funny and warm, a real delight", 1), ("the plot is a mess", 0), ("brilliant acting all round", 1)]


@pytest.fixture
def index_dir(tmp_path):
    encoder = Encoder(cache_dir=tmp_path / "emb")
    pool = [Example(i, (t,), y) for i, (t, y) in enumerate(REVIEWS)]
    DemoIndex(encoder).build(pool, task="reviews", label_names=["negative", "positive"],
                             text_fields=["review"]).save(tmp_path / "index")
    return tmp_path / "index"


def few_shot(selector):
    return FewShotPromptTemplate(
        example_selector=selector,
        example_prompt=PromptTemplate.from_template("Review: {review}\nSentiment: {label}"),
        prefix="Classify the sentiment.", suffix="Review: {review}\nSentiment:", input_variables=["review"])


def test_prompt_holds_the_nearest_examples_nearest_last(index_dir):
    selector = RiclExampleSelector.from_index(index_dir, k=2)
    assert isinstance(selector, BaseExampleSelector)
    text = few_shot(selector).format(review="a boring, lifeless movie")
    assert text == ("Classify the sentiment.\n\n"
                    "Review: slow and boring from start to finish\nSentiment: negative\n\n"
                    "Review: a dull, lifeless film\nSentiment: negative\n\n"
                    "Review: a boring, lifeless movie\nSentiment:")


def test_added_example_is_used_and_saved(index_dir):
    selector = RiclExampleSelector.from_index(index_dir, k=1, strategy="bm25")
    new_id = selector.add_example({"review": "the quokka scenes are pure bliss", "label": "positive"})
    assert new_id == len(REVIEWS)
    assert "Review: the quokka scenes are pure bliss\nSentiment: positive" in few_shot(selector).format(review="quokka")
    reloaded = RiclExampleSelector.from_index(index_dir, k=1, strategy="bm25")
    assert reloaded.select_examples({"review": "quokka"}) == [
        {"review": "the quokka scenes are pure bliss", "label": "positive"}]


def test_async_variants(index_dir):
    selector = RiclExampleSelector.from_index(index_dir, k=2, strategy="bm25")

    async def run():
        new_id = await selector.aadd_example({"review": "a wombat of a comedy, awful", "label": "negative"})
        return new_id, await few_shot(selector).aformat(review="wombat")

    new_id, text = asyncio.run(run())
    assert new_id == len(REVIEWS)
    assert text.endswith("Review: a wombat of a comedy, awful\nSentiment: negative\n\nReview: wombat\nSentiment:")


def test_renamed_variables_and_errors(index_dir):
    selector = RiclExampleSelector.from_index(index_dir, k=1, variables={"review": "input"}, label_key="output")
    assert selector.select_examples({"input": "a joyous triumph"}) == [
        {"input": "a joyous, moving triumph", "output": "positive"}]
    with pytest.raises(RiclError, match=r"missing input variables \['input'\]"):
        selector.select_examples({"review": "x"})
    with pytest.raises(RiclError, match="no 'output' key"):
        selector.add_example({"input": "x"})


@pytest.mark.lm  # the packaged SmolLM2 tokenizer (no weights) counts the budget
def test_a_token_budget_keeps_the_nearest_examples_that_fit(index_dir):
    query = {"review": "a boring, lifeless movie"}
    plain = RiclExampleSelector.from_index(index_dir, k=4)
    everything = plain.select_examples(query)
    full = plain.selector.prompt_tokens(query, plain.selector.select(query, 4))
    budgeted = RiclExampleSelector.from_index(index_dir, k=4, tokenizer="smollm2-135m", max_tokens=full - 1)
    kept = budgeted.select_examples(query)
    assert 0 < len(kept) < 4 and kept == [e for e in everything if e in kept] and kept[-1] == everything[-1]
    text = few_shot(budgeted).format(**query)
    assert text.count("Sentiment:") == len(kept) + 1  # the kept demonstrations and the query
    assert RiclExampleSelector(plain.selector, k=4, max_tokens=full).select_examples(query) == everything
