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
    oldest are dropped, loudly. With a ``spool_dir`` every recorded row still
    queued when a write fails is also appended to a local file (and so are rows
    recorded during the outage, at each retry), so a restart or a crash during an
    outage loses at most the rows of one flush interval: ``start`` replays what
    earlier runs left there. Delivery from the spool is at least once: a crash
    after some batches were committed and before the spool was cleared writes
    those rows again on the next start.

One poisoned row must not cost the others theirs: when the database refuses a
batch for what a row holds (a value it cannot store, a broken constraint: see
``refused_for_its_rows``) rather than for being unreachable, the batch is split
in halves until the bad jobs stand alone. Every other row is committed; a bad
``write`` fails its own caller, a bad recorded row is dropped, logged with the
reason and counted (``hdx_writer_rows_refused``), never retried forever.

``close()`` (from the app's lifespan) writes what is queued, the batch being
written included, retries kept rows briefly, then stops.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from diagnosis.batching import group_slices
from storage.telemetry import CounterLike, make_counter

Row = dict[str, Any]
Insert = Callable[[Any, Sequence[Row]], Awaitable[Sequence[Any] | None]]
MAX_PENDING = 200_000  # recorded rows kept through an outage before the oldest are dropped
_ROW_SQLSTATE_CLASSES = ("22", "23")  # data exception, integrity constraint violation


def refused_for_its_rows(exc: BaseException) -> bool:
    """Whether the database (or SQLAlchemy, binding the values) refused the statement because of
    the values it carries, so that the same rows would fail again; anything else (a connection
    lost or refused, a timeout, a missing table) is an outage, worth retrying as it is."""
    if not isinstance(exc, StatementError):
        return False
    if not isinstance(exc, DBAPIError):
        return True  # a value SQLAlchemy could not bind (a naive datetime, a type it cannot convert)
    if exc.connection_invalidated:
        return False
    if isinstance(exc, DataError | IntegrityError):
        return True
    # asyncpg's data errors arrive as a plain DBAPIError; their SQLSTATE says what they are.
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return str(sqlstate or "")[:2] in _ROW_SQLSTATE_CLASSES


@lru_cache(maxsize=1)
def _refused_counter() -> CounterLike:
    # One per process: the audit and history writers share the metric, told apart by a tag.
    return make_counter(
        "hdx_writer_rows_refused",
        "rows a batched writer could not store because the database refused their values "
        "(recorded: dropped; written: the caller got the error)",
        ("writer", "kind"),
    )


@dataclass
class _Job:
    rows: Sequence[Row]
    waiter: asyncio.Future | None  # None: recorded, kept and retried when the database refuses
    spooled: bool = False  # already in the spool file


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
        spool_dir: Path | None = None,
    ) -> None:
        """``db``: a ``storage.db.Database``; ``max_rows`` per statement (a caller's rows are
        never split); ``flush_interval_s``: how often recorded rows are written (None: only
        when a ``write`` wakes the writer, or on ``flush``/``close``); ``spool_dir``: where
        recorded rows the database refused are kept on disk (None: in memory only)."""
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
        self._spool = _Spool.open(spool_dir, name, self.log) if spool_dir is not None else None
        self.commits = 0
        self.rows_written = 0
        self.rows_refused = 0  # rows the database refused for their values (dropped or failed)

    # --- entry points -------------------------------------------------------------------------
    def start(self) -> None:
        """Queue the recorded rows that earlier runs left in the spool and start the writer."""
        if self._spool is not None:
            rows = self._spool.adopt()
            if rows:
                self.log.warning("%s: replaying %d recorded rows left by an earlier run", self.name, len(rows))
            self._queue.extend(_Job((row,), None, spooled=True) for row in rows)
        self._ensure_running()

    async def write(self, rows: Sequence[Row]) -> list:
        """Store ``rows`` with the next batch and return their ids, in order; raises what the
        database raised for that batch (for a batch refused for another caller's rows: nothing)."""
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
            if self._spool is not None:
                self._spool.clear()  # everything it held is now stored (or refused for good)
            return True

    def _take_batch(self) -> list[_Job]:
        batch, n = [], 0
        while self._queue and (not batch or n + len(self._queue[0].rows) <= self.max_rows):
            job = self._queue.popleft()
            batch.append(job)
            n += len(job.rows)
        return batch

    async def _write_batch(self, batch: list[_Job]) -> bool:
        """False on an outage: the batch's callers fail, its recorded rows are kept."""
        self._in_flight = sum(len(job.rows) for job in batch)
        try:
            unwritten, error = await self._store(batch)
        finally:
            self._in_flight = 0
        if error is None:
            return True
        kept = [job for job in unwritten if job.waiter is None]
        self._queue.extendleft(reversed(kept))  # first in line for the next flush
        for job in unwritten:
            if job.waiter is not None and not job.waiter.done():
                job.waiter.set_exception(error)
        if kept:
            # Everything recorded and still queued, not only this batch: the process may not live
            # to retry (a kill, a node lost), and rows are only safe once they are on disk.
            self._spool_kept([job for job in self._queue if job.waiter is None])
            self.log.warning("%s: write failed, %d rows kept for retry: %s", self.name, self.backlog, error)
        return False

    async def _store(self, jobs: Sequence[_Job]) -> tuple[list[_Job], BaseException | None]:
        """Insert the jobs' rows in one transaction; when the database refuses a row's values,
        halves until the bad jobs stand alone. Returns the jobs an outage left unwritten, and it."""
        rows = [row for job in jobs for row in job.rows]
        try:
            async with self.db.sessionmaker() as session:
                ids = list(await self.insert(session, rows) or [None] * len(rows))
                await session.commit()
        except Exception as exc:
            if not refused_for_its_rows(exc):
                return list(jobs), exc
            if len(jobs) == 1:
                self._refuse(jobs[0], exc)
                return [], None
            half = len(jobs) // 2
            unwritten, error = await self._store(jobs[:half])
            if error is not None:
                return unwritten + list(jobs[half:]), error
            return await self._store(jobs[half:])
        self.commits += 1
        self.rows_written += len(rows)
        for job, part in zip(jobs, group_slices(len(job.rows) for job in jobs)):
            if job.waiter is not None and not job.waiter.done():  # a caller that went away still has its rows stored
                job.waiter.set_result(ids[part])
        return [], None

    def _refuse(self, job: _Job, exc: BaseException) -> None:
        """A job whose rows the database will never take: its caller gets the error, a recorded row is dropped."""
        self.rows_refused += len(job.rows)
        kind = "written" if job.waiter is not None else "recorded"
        _refused_counter().inc(len(job.rows), tags={"writer": self.name, "kind": kind})
        if job.waiter is not None:
            if not job.waiter.done():
                job.waiter.set_exception(exc)
            return
        reason = str(exc).splitlines()[0][:300]  # the database's words, not the row's values
        self.log.error("%s: dropped a recorded row the database refuses: %s", self.name, reason)

    def _spool_kept(self, kept: list[_Job]) -> None:
        fresh = [job for job in kept if not job.spooled]
        if self._spool is None or not fresh:
            return
        if self._spool.append([row for job in fresh for row in job.rows]):
            for job in fresh:
                job.spooled = True

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
        rows the database refuses are retried ``attempts`` times, then left in the spool (if
        any) for the next start."""
        self._closing = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            await self._task
        try:
            if self._spool is not None and self._spool.rows:
                # The database failed before: keep what is queued on disk first, so a replica
                # stopped (or killed) before the retries end loses nothing.
                self._spool_kept([job for job in self._queue if job.waiter is None])
            for attempt in range(attempts):
                if await self.flush():
                    return
                await asyncio.sleep(0.5 * (attempt + 1))
            self._spool_kept([job for job in self._queue if job.waiter is None])
            where = f", kept in {self._spool.path}" if self._spool is not None else ""
            self.log.error("%s: %d rows could not be written at shutdown%s", self.name, self.backlog, where)
        finally:
            if self._spool is not None:
                self._spool.close()


class _Spool:
    """Recorded rows waiting for the database, as JSON lines in a file of this writer's own.

    Each writer (one per ingress replica) appends to ``<name>-<random>.jsonl`` and holds an
    exclusive ``flock`` on it while it runs; a file nobody holds was left by a writer that is
    gone (a restart, a crash) and is adopted by the next one that starts, so replicas sharing
    a folder never take each other's rows. Appends are fsync'ed: they happen only while the
    database refuses, never on the request path of a healthy service.
    """

    def __init__(self, path: Path, file, log: logging.Logger) -> None:
        self.path, self._file, self.log = path, file, log
        self.rows = 0

    @classmethod
    def open(cls, folder: Path, name: str, log: logging.Logger) -> _Spool | None:
        path = Path(folder) / f"{name}-{uuid.uuid4().hex}.jsonl"
        hidden = path.with_name(f".{path.stem}.tmp")  # not matched by ``adopt`` until it is locked
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file = open(hidden, "ab")  # held open (and locked) for the writer's life
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, path)
        except OSError as exc:
            log.error("no audit spool in %s (%s): rows kept through an outage live in memory only", folder, exc)
            return None
        return cls(path, file, log)

    def adopt(self) -> list[Row]:
        """The rows of spool files no running writer holds, moved into this one."""
        adopted: list[Row] = []
        prefix = self.path.name.rsplit("-", 1)[0]
        for path in sorted(self.path.parent.glob(f"{prefix}-*.jsonl")):
            if path == self.path:
                continue
            try:
                with open(path, "rb") as orphan:
                    fcntl.flock(orphan, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if os.fstat(orphan.fileno()).st_ino != os.stat(path).st_ino:
                        continue  # adopted and removed meanwhile by another writer; a new file took the name
                    rows = [row for row in map(_decode, orphan) if row is not None]
                    if rows and not self.append(rows):
                        continue  # could not copy them: leave the file for a later start
                    path.unlink(missing_ok=True)
            except (BlockingIOError, FileNotFoundError):
                continue  # its writer is alive, or another one adopted it first
            adopted += rows
        return adopted

    def append(self, rows: list[Row]) -> bool:
        try:
            self._file.write(b"".join(json.dumps(row, default=_encode).encode() + b"\n" for row in rows))
            self._file.flush()
            os.fsync(self._file.fileno())
        except (OSError, TypeError, ValueError) as exc:
            self.log.error("could not spool %d rows to %s: %s", len(rows), self.path, exc)
            return False
        self.rows += len(rows)
        return True

    def clear(self) -> None:
        if self.rows:
            self._file.truncate(0)
            os.fsync(self._file.fileno())
            self.rows = 0

    def close(self) -> None:
        if not self.rows:
            self.path.unlink(missing_ok=True)
        self._file.close()  # releases the lock: the next writer to start adopts what is left


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _decode(line: bytes) -> Row | None:
    """One spooled row; None for a line a crash cut short."""
    try:
        return json.loads(line, object_hook=lambda d: datetime.fromisoformat(d["$datetime"]) if "$datetime" in d else d)
    except ValueError:
        return None
