"""Many small writes, few transactions: the ingress's one batched database writer.

A ``BatchWriter`` owns one insert function (``async insert(session, rows) -> ids``,
e.g. ``storage.repositories.predictions.add_many``) and a single writer task that
takes everything queued, inserts it in one statement and commits once. Rows come
in two ways, for two needs:

``await write(rows)``
    The caller waits for its rows' ids (the prediction history: a client gets
    ``X-Prediction-ID`` only once its row is stored). The writer wakes at once:
    idle, a request waits only for its own insert; requests that arrive meanwhile
    form the next batch, so under load one commit serves many requests (group
    commit). A database error fails the callers of that batch, who decide what
    it means to them; the writer goes on with the next.

``record(row)``
    Fire and forget (the audit trail): the row waits for the next flush, every
    ``flush_interval_s``. When the database refuses, recorded rows are kept and
    retried at the next flush, so an outage delays them instead of losing them
    or failing requests; beyond ``max_pending`` kept rows (a long outage) the
    oldest are dropped, loudly.

``close()`` (from the app's lifespan) writes what is queued, the batch being
written included, retries kept rows briefly, then stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from diagnosis.batching import group_slices

Row = dict[str, Any]
Insert = Callable[[Any, Sequence[Row]], Awaitable[Sequence[Any] | None]]
MAX_PENDING = 200_000  # recorded rows kept through an outage before the oldest are dropped


@dataclass
class _Job:
    rows: Sequence[Row]
    waiter: asyncio.Future | None  # None: recorded, kept and retried when the database refuses


class BatchWriter:
    def __init__(
        self,
        db,
        insert: Insert,
        *,
        name: str,
        max_rows: int = 500,
        flush_interval_s: float | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """``db``: a ``storage.db.Database``; ``max_rows`` per statement (a caller's rows are
        never split); ``flush_interval_s``: how often recorded rows are written (None: only
        when a ``write`` wakes the writer, or on ``flush``/``close``)."""
        self.db = db
        self.insert = insert
        self.name = name
        self.max_rows = max_rows
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.log = logging.getLogger(f"hdx.{name}")
        self._queue: deque[_Job] = deque()
        self._in_flight = 0  # rows of the batch being written now
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.commits = 0
        self.rows_written = 0

    # --- entry points -------------------------------------------------------------------------
    async def write(self, rows: Sequence[Row]) -> list:
        """Store ``rows`` with the next batch and return their ids, in order; raises what the
        database raised for that batch."""
        if not rows:
            return []
        self._ensure_running()
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(rows, waiter))
        self._wake.set()
        return await waiter

    def record(self, row: Row) -> None:
        """Queue one row for the next flush; never raises for the database."""
        self._ensure_running()
        self._queue.append(_Job((row,), None))

    @property
    def backlog(self) -> int:
        """Rows queued or being written, not yet committed."""
        return sum(len(job.rows) for job in self._queue) + self._in_flight

    # --- the writer -----------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
            if self._closing:
                return

    async def flush(self) -> bool:
        """Write everything queued now, batch by batch. False when the database refused
        recorded rows (they are kept for the next flush)."""
        async with self._lock:
            self._drop_oldest_recorded()
            while self._queue:
                batch = self._take_batch()
                if not await self._write_batch(batch) and any(job.waiter is None for job in batch):
                    return False
            return True

    def _take_batch(self) -> list[_Job]:
        batch, n = [], 0
        while self._queue and (not batch or n + len(self._queue[0].rows) <= self.max_rows):
            job = self._queue.popleft()
            batch.append(job)
            n += len(job.rows)
        return batch

    async def _write_batch(self, batch: list[_Job]) -> bool:
        rows = [row for job in batch for row in job.rows]
        self._in_flight = len(rows)
        try:
            async with self.db.sessionmaker() as session:
                ids = list(await self.insert(session, rows) or [None] * len(rows))
                await session.commit()
        except Exception as exc:
            self._in_flight = 0
            kept = [job for job in batch if job.waiter is None]
            self._queue.extendleft(reversed(kept))  # first in line for the next flush
            for job in batch:
                if job.waiter is not None and not job.waiter.done():
                    job.waiter.set_exception(exc)
            if kept:
                self.log.warning("%s: write failed, %d rows kept for retry: %s", self.name, self.backlog, exc)
            return False
        self._in_flight = 0
        self.commits += 1
        self.rows_written += len(rows)
        for job, part in zip(batch, group_slices(len(job.rows) for job in batch)):
            if job.waiter is not None and not job.waiter.done():  # a caller that went away still has its rows stored
                job.waiter.set_result(ids[part])
        return True

    def _drop_oldest_recorded(self) -> None:
        if len(self._queue) <= self.max_pending:
            return
        excess = sum(1 for job in self._queue if job.waiter is None) - self.max_pending
        if excess <= 0:
            return
        survivors: deque[_Job] = deque()
        dropped = 0
        for job in self._queue:
            if job.waiter is None and dropped < excess:
                dropped += 1
                continue
            survivors.append(job)
        self._queue = survivors
        self.log.error("%s: backlog over %d rows; dropped the %d oldest", self.name, self.max_pending, dropped)

    async def close(self, attempts: int = 3) -> None:
        """Write what is queued, the batch being written now included, then stop; recorded
        rows the database refuses are retried ``attempts`` times before they are given up."""
        self._closing = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            await self._task
        for attempt in range(attempts):
            if await self.flush():
                return
            await asyncio.sleep(0.5 * (attempt + 1))
        self.log.error("%s: %d rows could not be written at shutdown", self.name, self.backlog)
