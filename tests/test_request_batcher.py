"""RequestBatcher with plain Python batch functions: order, batches, per-item exceptions, many threads, shutdown."""

import threading

import pytest

from retrieval_icl.errors import RiclError
from retrieval_icl.serving.request_batcher import RequestBatcher, grouped


class Recorder:
    """A batch function that doubles numbers, records each call's items, refuses negatives (the whole call fails)
    and, while `gate` is cleared, waits at it: a test can hold the worker while items pile up."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.entered.set()
        assert self.gate.wait(timeout=30)
        if any(x < 0 for x in items):
            raise ValueError(f"negative item among {len(items)}")
        return [2 * x for x in items]


def held_batch(batcher: RequestBatcher, recorder: Recorder, items: list[int]) -> list:
    """Futures of `items`, all queued while the worker was held on a first item (0), so they form one batch."""
    recorder.gate.clear()
    first = batcher.submit(0)
    assert recorder.entered.wait(timeout=30)  # the worker holds the first item
    futures = [batcher.submit(x) for x in items]
    assert batcher.queued == len(items)
    recorder.gate.set()
    assert first.result(timeout=30) == 0
    return futures


def test_items_queued_together_are_one_batch_in_submit_order():
    recorder = Recorder()
    with RequestBatcher(recorder) as batcher:
        futures = held_batch(batcher, recorder, [5, 3, 9, 1])
        assert [f.result(timeout=30) for f in futures] == [10, 6, 18, 2]
    assert recorder.calls == [[0], [5, 3, 9, 1]]


def test_a_batch_holds_at_most_max_batch_items():
    recorder = Recorder()
    with RequestBatcher(recorder, max_batch=3) as batcher:
        futures = held_batch(batcher, recorder, list(range(1, 8)))
        assert [f.result(timeout=30) for f in futures] == [2 * x for x in range(1, 8)]
    assert recorder.calls == [[0], [1, 2, 3], [4, 5, 6], [7]]


def test_a_failing_batch_is_retried_item_by_item_and_only_the_bad_item_fails():
    recorder = Recorder()
    with RequestBatcher(recorder) as batcher:
        futures = held_batch(batcher, recorder, [4, -1, 6])
        assert futures[0].result(timeout=30) == 8 and futures[2].result(timeout=30) == 12
        with pytest.raises(ValueError, match="negative item among 1$"):  # the exception it raises alone
            futures[1].result(timeout=30)
    assert recorder.calls == [[0], [4, -1, 6], [4], [-1], [6]]


def test_a_batch_function_with_the_wrong_number_of_results_fails_every_item():
    with RequestBatcher(lambda items: []) as batcher:
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items; expected one per item"):
            batcher.submit("x").result(timeout=30)


def test_many_threads_get_their_own_results():
    recorder = Recorder()
    results: dict[int, list[int]] = {}

    def client(n: int) -> None:
        results[n] = [batcher.submit(1000 * n + i).result(timeout=30) for i in range(40)]

    with RequestBatcher(recorder) as batcher:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {n: [2 * (1000 * n + i) for i in range(40)] for n in range(12)}
    assert sorted(x for call in recorder.calls for x in call) == sorted(1000 * n + i for n in range(12)
                                                                         for i in range(40))


def test_close_answers_what_was_queued_then_stops_the_worker():
    recorder = Recorder()
    batcher = RequestBatcher(recorder).start()
    assert batcher.running
    recorder.gate.clear()
    first = batcher.submit(1)
    assert recorder.entered.wait(timeout=30)  # the worker holds the first item
    queued = [batcher.submit(x) for x in (2, 3)]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    recorder.gate.set()
    closing.join(timeout=30)
    assert [f.result(timeout=0) for f in [first, *queued]] == [2, 4, 6]
    assert not batcher.running
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit(4)
    batcher.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="already started"):
        batcher.start()


def test_submit_before_start_and_a_bad_max_batch_are_refused():
    with pytest.raises(RuntimeError, match=r"not running: start\(\) it first"):
        RequestBatcher(len).submit("x")
    with pytest.raises(RiclError, match="max_batch must be a positive integer, got 0"):
        RequestBatcher(len, max_batch=0)


def test_grouped_keeps_first_appearance_order():
    assert grouped([(3, "a"), (2, "b"), (3, "c"), (1, "d")], lambda item: item[0]) == {3: [0, 2], 2: [1], 1: [3]}
    assert grouped([], len) == {}
