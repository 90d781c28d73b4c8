"""Pools the selector tests share (tests/test_selector_*.py): the tiny SST-2 data as an index, and nine sentences
on three topics."""

from __future__ import annotations

from standin import TINY_DATA

from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder

TOPICS = {
    "cats": ["the cat sat on the mat", "a cat is sitting on a mat", "the kitten slept on the rug"],
    "markets": ["stock markets fell sharply today", "shares dropped as investors panicked",
                "the central bank raised interest rates"],
    "football": ["the football team won the final", "the striker scored two goals", "fans cheered as the match ended"],
}


def tiny_sst2(encoder: Encoder) -> tuple[DemoIndex, list[Example], list[Example]]:
    """(index, pool, queries): the 40 tiny SST-2 train lines as the indexed pool, the 8 validation lines as queries."""
    task = load_task("sst2")
    pool, queries = load_examples(task, "train", TINY_DATA), load_examples(task, "validation", TINY_DATA)
    return DemoIndex(encoder).build(pool), pool, queries


def topic_index(encoder: Encoder) -> tuple[DemoIndex, dict[int, str]]:
    """(index, topic_of): the TOPICS sentences, ids 0-8, label = topic number; topic_of maps id -> topic name."""
    texts = [(topic, t) for topic, ts in TOPICS.items() for t in ts]
    pool = [Example(i, (t,), list(TOPICS).index(topic)) for i, (topic, t) in enumerate(texts)]
    return DemoIndex(encoder).build(pool), {i: topic for i, (topic, _) in enumerate(texts)}
