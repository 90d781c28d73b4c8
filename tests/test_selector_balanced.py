"""balanced: each label gets the floor or ceiling of its share of k, each label's nearest, slots moved from a label
with too few examples, other selectors wrapped by name."""

from collections import Counter

import pytest
from standin import TINY_DATA

from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.selectors.balanced import BalancedSelector
from retrieval_icl.selectors.base import make_selector


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7])
def test_balanced_gives_each_label_floor_or_ceil(k, pool_encoder):
    pool = load_examples(load_task("agnews"), "train_sample", TINY_DATA)  # 5 headlines of each of 4 labels
    index = DemoIndex(pool_encoder).build(pool)
    labels = sorted({ex.label for ex in pool})
    for sel in BalancedSelector(base="knn").fit(index).select(["stocks rallied on strong earnings"], k):
        counts = Counter(index.example(i).label for i in sel.demo_ids)
        assert sum(counts.values()) == k and len(set(sel.demo_ids)) == k
        assert all(counts[label] in (k // len(labels), -(-k // len(labels))) for label in labels)


def test_balanced_knn_takes_each_labels_nearest(topics):
    index, _ = topics
    query = "the cat played football"
    chosen = BalancedSelector(order="nearest_first").fit(index).select([query], 3)[0]
    q = index.encoder.encode([query])[0]
    sims = index.embeddings(index.ids) @ q
    expected = {max((i for i in index.ids if index.example(int(i)).label == label), key=lambda i: sims[i])
                for label in range(3)}
    assert set(chosen.demo_ids) == {int(i) for i in expected}
    assert chosen.scores == sorted(chosen.scores, reverse=True)


def test_balanced_moves_slots_from_a_small_label(pool_encoder):
    pool = [Example(i, (t,), 0) for i, t in enumerate(["good", "great", "fine", "nice", "lovely"])]
    pool.append(Example(5, ("awful",), 1))
    index = DemoIndex(pool_encoder).build(pool)
    sel = BalancedSelector().fit(index).select(["a good film"], 4)[0]
    assert Counter(index.example(i).label for i in sel.demo_ids) == {0: 3, 1: 1}
    # the only label-1 example is the query itself: all slots go to label 0
    sel = BalancedSelector().fit(index).select(["awful"], 4)[0]
    assert Counter(index.example(i).label for i in sel.demo_ids) == {0: 4}


def test_balanced_wraps_other_selectors_and_checks_names(topics):
    index, _ = topics
    sel = BalancedSelector(base="mmr", lambda_mult=0.3, fetch_k=3).fit(index).select(["cat"], 6)[0]
    assert Counter(index.example(i).label for i in sel.demo_ids) == {0: 2, 1: 2, 2: 2}
    assert BalancedSelector(base="random").uses_seed and not BalancedSelector(base="knn").uses_seed
    with pytest.raises(RiclError, match=r"unknown selector 'nope'; known: \["):
        BalancedSelector(base="nope")
    with pytest.raises(RiclError, match="selector 'knn'"):
        make_selector("balanced", base="knn", lambda_mult=0.5)
    with pytest.raises(RiclError, match="cannot wrap itself"):
        make_selector("balanced", base="balanced")
