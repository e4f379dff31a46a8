"""Served diagnoses into the prediction history: many requests, one transaction.

``HistoryWriter.add`` queues one request's rows and waits for their ids (the
client gets ``X-Prediction-ID`` only once its row is stored). A single writer
task takes everything queued, inserts it with one multi-row ``INSERT ...
RETURNING`` and one commit, and answers every waiting request; requests that
arrive meanwhile form the next batch. Idle, a request waits only for its own
insert; under load one commit serves many requests (group commit), which is
what keeps the history off the critical path of the prediction routes.

A database error fails the ``add`` of the requests in that batch; their
callers log it and still answer the diagnosis, without a prediction id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from diagnosis.batching import group_slices
from storage.repositories import predictions as predictions_repo

log = logging.getLogger("hdx.history")


class HistoryWriter:
    def __init__(self, db, max_rows: int = 500) -> None:
        self.db = db
        self.max_rows = max_rows
        self._waiting: list[tuple[Sequence[dict[str, Any]], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.commits = 0
        self.rows_written = 0

    async def add(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Store rows built by ``storage.repositories.predictions.row``; their ids, in order."""
        if not rows:
            return []
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        self._wake.set()
        return await future

    def _take_batch(self) -> list[tuple[Sequence[dict[str, Any]], asyncio.Future]]:
        batch, n = [], 0
        while self._waiting and (not batch or n + len(self._waiting[0][0]) <= self.max_rows):
            rows, future = self._waiting.pop(0)
            batch.append((rows, future))
            n += len(rows)
        return batch

    async def _write(self, batch) -> None:
        try:
            async with self.db.sessionmaker() as session:
                ids = await predictions_repo.add_many(session, [r for rows, _ in batch for r in rows])
                await session.commit()
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.rows_written += len(ids)
        for (_, future), part in zip(batch, group_slices(len(rows) for rows, _ in batch)):
            if not future.done():  # a caller that went away still has its rows stored
                future.set_result(ids[part])

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                await self._write(self._take_batch())
            if self._closing:
                return

    async def close(self) -> None:
        """Write what is queued, the batch being written now included, then stop; called
        from the app's lifespan."""
        self._closing = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            await self._task
        while self._waiting:  # queued when no writer task ran
            await self._write(self._take_batch())
