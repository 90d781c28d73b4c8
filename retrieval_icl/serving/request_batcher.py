"""Micro-batching for a server: items submitted from many threads, answered by one worker thread in batches.

A request thread `submit`s its item and waits on the returned future; the worker waits for at least one item,
takes everything queued meanwhile (up to `max_batch`) and calls `batch_fn` once on the lot. No timer: while one
batch computes, the next one accumulates, so batches grow with the load by themselves. Grouping the items of a
batch (by k, by strategy) is the batch function's business: it may share work across groups (one encoder call).

>>> with RequestBatcher(lambda words: [w.upper() for w in words]) as batcher:
...     [batcher.submit(w).result() for w in ("ab", "cde")]
['AB', 'CDE']
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Callable, Generic, Sequence, TypeVar

from ..errors import RiclError

Item = TypeVar("Item")
Result = TypeVar("Result")
Pending = tuple  # (item, Future of its result)
_STOP = object()  # queued by close(): everything queued before it is still answered


class RequestBatcher(Generic[Item, Result]):
    """Calls `batch_fn(items) -> results` (one result per item, same order; items in submit order) on batches of
    submitted items.

    Each future gets its own result or exception: when a batch's call raises, its items are retried one by one,
    so only the items that fail on their own get an exception (each the one it raises alone). `start()` runs the
    worker (a daemon thread), `close()` answers what was queued and stops it; as a context manager it does both.
    """

    def __init__(self, batch_fn: Callable[[list[Item]], Sequence[Result]], max_batch: int = 64) -> None:
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch <= 0:
            raise RiclError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.batch_fn, self.max_batch = batch_fn, max_batch
        self._queue: SimpleQueue = SimpleQueue()
        self._state = threading.Lock()  # orders submit against close: nothing is queued after _STOP
        self._closed = False
        self._worker: threading.Thread | None = None

    def start(self) -> "RequestBatcher[Item, Result]":
        """Start the worker thread; returns self."""
        with self._state:
            if self._worker is not None or self._closed:
                raise RuntimeError("this RequestBatcher was already started; make a new one")
            self._worker = threading.Thread(target=self._run, name="request-batcher", daemon=True)
            self._worker.start()
        return self

    @property
    def running(self) -> bool:
        """True from start() until close() has stopped the worker."""
        return self._worker is not None and self._worker.is_alive()

    @property
    def queued(self) -> int:
        """Items submitted and not yet taken into a batch by the worker."""
        return self._queue.qsize()

    def submit(self, item: Item) -> "Future[Result]":
        """Queue one item; the future resolves with its result or exception once its batch has run."""
        future: Future[Result] = Future()
        with self._state:
            if self._worker is None or self._closed:
                # RuntimeError, not RiclError: a server error (500), not the client's bad input (422)
                raise RuntimeError("the RequestBatcher is not running: start() it first (and not after close())")
            self._queue.put((item, future))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Answer every item already queued, then stop the worker (waiting at most `timeout` seconds)."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._worker is not None:
            self._worker.join(timeout)

    def __enter__(self) -> "RequestBatcher[Item, Result]":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            if batch:
                self._answer(batch)

    def _next_batch(self) -> tuple[list[Pending], bool]:
        """Block for one entry, then take what else is queued, up to max_batch; True when _STOP was reached."""
        batch: list[Pending] = []
        entry = self._queue.get()
        while entry is not _STOP:
            batch.append(entry)
            if len(batch) >= self.max_batch or self._queue.empty():
                return batch, False
            entry = self._queue.get()
        return batch, True

    def _answer(self, batch: list[Pending]) -> None:
        """Resolve each future of the batch; a failed call of several items is retried item by item."""
        items = [item for item, _ in batch]
        try:
            results = list(self.batch_fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(items)} items; "
                                "expected one per item")
        except Exception as error:  # handed to the waiting request threads, never raised in the worker
            if len(batch) > 1:
                for one in batch:
                    self._answer([one])
            else:
                batch[0][1].set_exception(error)
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)


def grouped(items: Sequence[Item], key: Callable[[Item], object]) -> dict[object, list[int]]:
    """key -> the positions of the items with that key, keys in order of first appearance.

    >>> grouped(["a", "bb", "c"], len)
    {1: [0, 2], 2: [1]}
    """
    groups: dict[object, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(key(item), []).append(position)
    return groups
