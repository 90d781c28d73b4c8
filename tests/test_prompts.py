import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_task
from retrieval_icl.errors import RiclError
from retrieval_icl.lm.prompts import PromptBuilder

pytestmark = pytest.mark.lm

DEMOS = [Example(10, ("a gorgeous, witty film",), 1), Example(11, ("dull and far too long",), 0),
         Example(12, ("I loved every minute",), 1)]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def tokenizer(request):
    """Each packaged model's tokenizer: SmolLM2 adds no BOS, Gemma 3 adds one."""
    return request.getfixturevalue(request.param).tokenizer


def test_prompt_text_follows_the_template():
    builder = PromptBuilder(load_task("sst2"))
    text, _, _, _ = builder.render(DEMOS[:2], ("what a ride",))
    assert text == ("Input: a gorgeous, witty film\nOutput: positive\n\n"
                    "Input: dull and far too long\nOutput: negative\n\n"
                    "Input: what a ride\nOutput:")


@pytest.mark.parametrize("label_format, words", [("default", ["positive", "negative", "positive"]),
                                                 ("symbols", ["B", "A", "B"]),
                                                 ("swapped", ["negative", "positive", "negative"])])
def test_token_spans_decode_back_to_inputs_and_labels(tokenizer, label_format, words):
    prompt = PromptBuilder(load_task("sst2"), label_format, tokenizer).build(DEMOS, ("what a ride",))
    decode = lambda span: tokenizer.decode(prompt.token_ids[span[0]:span[1]]).strip()  # noqa: E731
    assert [decode(s) for s in prompt.x_spans] == [f"Input: {d.texts[0]}" for d in DEMOS]
    assert [decode(s) for s in prompt.y_spans] == words
    assert decode(prompt.query_span) == "Input: what a ride"
    assert tokenizer.decode(prompt.token_ids[-2:]) == "Output:"
    assert prompt.demo_ids == [10, 11, 12] and prompt.n_demos_used == 3
    assert all(x[1] < y[0] for x, y in zip(prompt.x_spans, prompt.y_spans))


def test_the_preamble_is_one_bos_and_belongs_to_no_demonstration(tokenizer):
    prompt = PromptBuilder(load_task("sst2"), tokenizer=tokenizer).build(DEMOS, ("what a ride",))
    assert prompt.preamble_span == (0, 1) and prompt.token_ids[0] == tokenizer.bos_token_id
    assert prompt.token_ids[1] not in tokenizer.all_special_ids  # the tokenizer's own BOS is not doubled
    assert min(s[0] for s in prompt.x_spans + prompt.y_spans + [prompt.query_span]) == 1
    assert tokenizer.decode(prompt.token_ids[slice(*prompt.x_spans[0])]).strip() == "Input: a gorgeous, witty film"


def test_an_instruction_line_joins_the_preamble(tokenizer):
    task = load_task("sst2")
    task = task.model_copy(
        update={"template": task.template.model_copy(update={"instruction": "Classify the review."})})
    prompt = PromptBuilder(task, tokenizer=tokenizer).build(DEMOS, ("what a ride",))
    start, end = prompt.preamble_span
    assert start == 0 and tokenizer.decode(prompt.token_ids[1:end]).strip() == "Classify the review."
    assert prompt.x_spans[0][0] == end


@pytest.mark.parametrize("task", ["sst2", "agnews", "trec", "mnli"])
def test_every_label_format_scores_the_tokens_a_demonstration_holds(tokenizer, task):
    spec = load_task(task)
    for fmt in spec.label_formats:
        builder = PromptBuilder(spec, fmt, tokenizer)
        builder.check_label_tokens([tokenizer(spec.template.label_prefix + w, add_special_tokens=False)["input_ids"]
                                    for w in builder.label_words])


def test_label_tokens_unlike_the_demonstrations_are_refused(tokenizer):
    builder = PromptBuilder(load_task("sst2"), tokenizer=tokenizer)
    right = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in builder.label_words]
    lone_space = tokenizer(" ", add_special_tokens=False)["input_ids"]  # what a SentencePiece split adds
    with pytest.raises(RiclError, match="label 'negative' is scored as tokens .* but appears in a demonstration as"):
        builder.check_label_tokens([lone_space + right[0], right[1]])


def test_two_field_task_spans_cover_both_fields(tokenizer):
    task = load_task("rte")
    demo = Example(0, ("The cat sat on the mat.", "A cat is sitting."), 0)
    prompt = PromptBuilder(task, tokenizer=tokenizer).build([demo], ("It rains.", "It is dry."))
    x = tokenizer.decode(prompt.token_ids[slice(*prompt.x_spans[0])])
    assert x.strip() == "Premise: The cat sat on the mat.\nHypothesis: A cat is sitting."
    assert tokenizer.decode(prompt.token_ids[slice(*prompt.y_spans[0])]).strip() == "yes"


def test_long_prompts_drop_the_least_similar_demonstrations_first(tokenizer):
    builder = PromptBuilder(load_task("sst2"), tokenizer=tokenizer)
    full = builder.build(DEMOS, ("what a ride",))
    builder.context_length = len(full.token_ids) - 1
    cut = builder.build(DEMOS, ("what a ride",), scores=[0.9, 0.1, 0.5])
    assert cut.demo_ids == [10, 12] and cut.dropped_ids == [11]
    assert cut.n_demos_requested == 3 and cut.n_demos_used == 2
    assert len(cut.token_ids) <= builder.context_length
    builder.context_length = 12
    with pytest.raises(RiclError, match="the query alone needs"):
        builder.build(DEMOS, ("what a ride " * 10,), scores=[0.9, 0.1, 0.5])


def test_reserve_leaves_room_for_the_label(tokenizer):
    builder = PromptBuilder(load_task("sst2"), tokenizer=tokenizer)
    full = builder.build(DEMOS, ("what a ride",))
    builder.context_length = len(full.token_ids)
    assert builder.build(DEMOS, ("what a ride",), reserve=0).n_demos_used == 3
    assert builder.build(DEMOS, ("what a ride",), reserve=2).n_demos_used == 2
