"""Many requests answered by one call.

``group_slices``: the ensemble (one feature step and one call per model for
concurrent requests), every model replica (one ``predict_proba`` per batch) and
the history writer (one INSERT for many requests' rows) concatenate their
requests' items, do the work once, and hand each request back its own slice.

``GreedyBatcher``: how the ensemble and the model replicas form those batches.
An item that reaches an idle batcher is processed at once; items that arrive
while a batch is being processed wait for it to finish and then go together, up
to ``max_batch_size``. At light load nobody waits for companions that never
come; under load the batch grows with the queue, so the per-call cost of a hop
is paid once per batch.

Serve's ``@serve.batch`` cannot do this: it waits ``batch_wait_timeout_s`` for
companions, and with a timeout of 0 it still cuts the queue into batches
*before* a batch may start (``max_concurrent_batches``), so under load it
processes a queue of one-item batches one after another
(``ray/serve/batching.py``, ``_BatchQueue._process_batches``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from itertools import accumulate, pairwise
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def group_slices(sizes: Iterable[int]) -> list[slice]:
    """The slice of the concatenated items that belongs to each group, in order."""
    return [slice(start, stop) for start, stop in pairwise(accumulate(sizes, initial=0))]


class GreedyBatcher(Generic[Item, Result]):
    """``await submit(item)`` → that item's result from ``process(batch)``.

    ``process`` takes a list of items and returns one result per item, in order;
    an exception it raises is every caller's of that batch. One batch runs at a
    time. A caller cancelled while waiting (a request timeout) is left out of the
    next batch. Use from one event loop (a replica's).
    """

    def __init__(self, process: Callable[[list[Item]], Awaitable[list[Result]]], max_batch_size: int):
        self._process = process
        self.max_batch_size = max_batch_size
        self._queue: deque[tuple[Item, asyncio.Future]] = deque()
        self._worker: asyncio.Task | None = None

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {value}")
        self._max_batch_size = int(value)

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        batch = []
        while self._queue and len(batch) < self._max_batch_size:
            item, future = self._queue.popleft()
            if not future.done():  # cancelled callers are skipped
                batch.append((item, future))
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[Item, asyncio.Future]] = []
        try:
            while self._queue:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    results = await self._process([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a batch of {len(batch)} items got {len(results)} results")
                except Exception as exc:  # every caller of this batch gets it; the next batch goes on
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        except asyncio.CancelledError:  # the replica is shutting down: nobody is left waiting
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.cancel()
            self._queue.clear()
            raise
