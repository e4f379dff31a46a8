"""GreedyBatcher: no wait at an idle replica, the queue forms the next batch, and every
caller gets its own answer or its batch's error (diagnosis/batching.py)."""

from __future__ import annotations

import asyncio

import pytest

from diagnosis.batching import GreedyBatcher, group_slices


class Recorder:
    """A batch function that records every batch and can be held until released."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [i * 10 for i in items]


async def test_a_lone_item_is_processed_at_once_with_no_wait_window():
    record = Recorder()
    batcher = GreedyBatcher(record, max_batch_size=8)
    task = asyncio.create_task(batcher.submit(3))
    for _ in range(4):  # a few loop iterations, no timer: a wait window would still be waiting
        await asyncio.sleep(0)
    assert task.done() and task.result() == 30
    assert record.batches == [[3]]


async def test_items_arriving_during_a_batch_form_the_next_batch():
    record = Recorder()
    record.gate.clear()
    batcher = GreedyBatcher(record, max_batch_size=8)
    first = asyncio.create_task(batcher.submit(1))
    await record.started.wait()  # batch [1] is being processed
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 7)]
    await asyncio.sleep(0)
    record.gate.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40, 50, 60]
    assert record.batches == [[1], [2, 3, 4, 5, 6]]


async def test_the_queue_is_cut_at_max_batch_size_in_arrival_order():
    record = Recorder()
    record.gate.clear()
    batcher = GreedyBatcher(record, max_batch_size=3)
    tasks = [asyncio.create_task(batcher.submit(0))]
    await record.started.wait()
    tasks += [asyncio.create_task(batcher.submit(i)) for i in range(1, 8)]
    await asyncio.sleep(0)
    record.gate.set()
    assert [await t for t in tasks] == [i * 10 for i in range(8)]
    assert record.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]


async def test_a_failing_batch_fails_its_own_callers_only():
    record = Recorder()
    record.gate.clear()
    batcher = GreedyBatcher(record, max_batch_size=2)
    first = asyncio.create_task(batcher.submit(1))
    await record.started.wait()
    bad = [asyncio.create_task(batcher.submit(i)) for i in (-1, 2)]
    good = [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
    await asyncio.sleep(0)
    record.gate.set()
    assert await first == 10
    for task in bad:
        with pytest.raises(ValueError, match="negative item"):
            await task
    assert [await t for t in good] == [30, 40]


async def test_a_wrong_number_of_results_is_an_error_not_a_misrouted_answer():
    async def short(items):
        return items[:-1]

    batcher = GreedyBatcher(short, max_batch_size=4)
    with pytest.raises(RuntimeError, match="1 items got 0 results"):
        await batcher.submit(1)


async def test_a_cancelled_caller_is_left_out_of_the_next_batch():
    record = Recorder()
    record.gate.clear()
    batcher = GreedyBatcher(record, max_batch_size=8)
    first = asyncio.create_task(batcher.submit(1))
    await record.started.wait()
    gone = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    record.gate.set()
    assert await first == 10 and await kept == 30
    assert gone.cancelled()
    assert record.batches == [[1], [3]]


async def test_after_the_queue_empties_the_next_item_starts_a_new_worker():
    record = Recorder()
    batcher = GreedyBatcher(record, max_batch_size=8)
    assert await batcher.submit(1) == 10
    await asyncio.sleep(0)  # the worker has finished
    assert await batcher.submit(2) == 20
    assert record.batches == [[1], [2]]


async def test_max_batch_size_is_checked_and_changeable():
    batcher = GreedyBatcher(Recorder(), max_batch_size=4)
    batcher.max_batch_size = 2
    assert batcher.max_batch_size == 2
    with pytest.raises(ValueError, match="at least 1"):
        batcher.max_batch_size = 0


def test_group_slices():
    assert group_slices([2, 0, 3]) == [slice(0, 2), slice(2, 2), slice(2, 5)]
