"""The audit trail: one record per API call, written in batches off the request path.

Requests only ``put`` a record on an in-memory queue; ``AuditWriter`` flushes it
every ``audit_flush_interval_s`` with one multi-row insert. A failed flush keeps
its records and retries at the next interval (a database outage delays the trail,
it does not lose it or fail requests); the app's lifespan calls ``close`` on
shutdown, which flushes what is left.

Who called is read from ``request.state.principal``, which
``api.deps.current_principal`` sets on every route that authenticates; a 401
there is recorded as ``auth_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import Request

from auth.principal import Principal
from storage.tables import utcnow
from storage.repositories import audit as audit_repo

log = logging.getLogger("hdx.audit")
UNAUDITED_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})  # load-balancer probes, every few seconds
MAX_PENDING = 200_000  # beyond this (a long outage) the oldest records are dropped, loudly


class AuditWriter:
    def __init__(self, db, flush_interval_s: float, batch_size: int = 1000) -> None:
        self.db = db
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending: list[dict[str, Any]] = []  # taken off the queue, not yet written
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def record(self, entry: dict[str, Any]) -> None:
        entry.setdefault("created_at", utcnow())
        self._queue.put_nowait(entry)

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + len(self._pending)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> bool:
        """Write everything queued so far; False (records kept) when the database refused."""
        async with self._lock:
            while not self._queue.empty():
                self._pending.append(self._queue.get_nowait())
            if len(self._pending) > MAX_PENDING:
                dropped = len(self._pending) - MAX_PENDING
                del self._pending[:dropped]
                log.error("audit backlog over %d records; dropped the %d oldest", MAX_PENDING, dropped)
            while self._pending:
                batch = self._pending[: self.batch_size]
                try:
                    async with self.db.sessionmaker() as session:
                        await audit_repo.add_many(session, batch)
                        await session.commit()
                except Exception as exc:  # the database is down: keep the records, try next round
                    log.warning("audit flush failed, %d records kept for retry: %s", len(self._pending), exc)
                    return False
                del self._pending[: len(batch)]
                self.written += len(batch)
            return True

    async def close(self, attempts: int = 3) -> None:
        """Stop the timer and flush the rest (retrying briefly); called from the app's lifespan."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for attempt in range(attempts):
            if await self.flush():
                return
            await asyncio.sleep(0.5 * (attempt + 1))
        log.error("audit trail: %d records could not be written at shutdown", self.backlog)


def outcome(status: int) -> str:
    if status == 401:
        return "auth_failed"
    if status == 403:
        return "denied"
    if status == 429:
        return "rate_limited"
    return "ok" if status < 400 else "error"


def route_template(request: Request) -> str:
    """``/api/v1/systems/{system_id}`` rather than the concrete path: groups calls per endpoint."""
    route = request.scope.get("route")
    # Unmatched paths (404s, scanners) share one label, so metrics stay bounded; ``path`` keeps the detail.
    return getattr(route, "path", None) or "<unmatched>"


def entry(request: Request, status: int, latency_ms: float) -> dict[str, Any]:
    principal: Principal | None = getattr(request.state, "principal", None)
    system_id = request.scope.get("path_params", {}).get("system_id") or getattr(request.state, "system_id", None)
    client = request.client.host if request.client else None
    return {
        "user_id": principal.user_id if principal else None,
        "username": principal.username if principal else None,
        "api_key_id": principal.api_key_id if principal else None,
        "method": request.method[:8],
        "route": route_template(request)[:200],
        "path": request.url.path[:500],
        "status": status,
        "outcome": outcome(status),
        "latency_ms": round(latency_ms, 3),
        "system_id": str(system_id)[:64] if system_id else None,
        "trace_id": str(getattr(request.state, "trace_id", "-"))[:64],
        "client": client[:64] if client else None,
    }
