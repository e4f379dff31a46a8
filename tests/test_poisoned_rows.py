"""The batched writer against real poisoned rows, real outages and a real restart, on SQLite and PostgreSQL.

A row the database refuses for what it holds costs only itself: the rest of its batch is committed, a
``write`` caller gets the error, a recorded row is dropped and counted, and the writer is not stuck
retrying it. An outage (nothing listening on the database's port) keeps recorded rows, in memory and in
the spool, which the next writer to start replays.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from sqlalchemy.exc import DBAPIError, StatementError

from storage.batch_writer import BatchWriter, refused_for_its_rows
from storage.db import Database
from storage.repositories import audit as audit_repo
from storage.repositories import predictions as predictions_repo
from storage.repositories.audit import AuditFilter, search
from storage.tables import utcnow
from tests.fixtures.db import add_system, add_user
from tests.test_platform_support import diagnosis

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"  # a refused connection, every time


def audit_row(trace_id: str, changes: dict | None = None) -> dict:
    row = {
        "created_at": utcnow(),
        "user_id": None,
        "username": None,
        "api_key_id": None,
        "method": "GET",
        "route": "/api/v1/systems",
        "path": "/api/v1/systems",
        "status": 200,
        "outcome": "ok",
        "latency_ms": 1.0,
        "system_id": None,
        "trace_id": trace_id,
        "client": "127.0.0.1",
    }
    return {**row, **(changes or {})}


def poisons(database_url: str) -> dict[str, dict]:
    """Values the database itself refuses (PostgreSQL: NUL in text, too long for String(64));
    on both, a naive datetime that SQLAlchemy will not bind."""
    found = {"naive created_at": {"created_at": datetime(2026, 1, 1)}}
    if database_url.startswith("postgresql"):
        found |= {"NUL in path": {"path": "/\x00"}, "over-long trace_id": {"trace_id": "t" * 65}}
    return found


async def _trail(db: Database) -> list[str]:
    async with db.session() as session:
        return sorted(r.trace_id for r in await search(session, AuditFilter(), limit=1000))


async def test_a_poisoned_recorded_row_is_dropped_and_the_rest_of_its_batch_committed(db, database_url):
    writer = BatchWriter(db, audit_repo.add_many, name="audit")
    bad = poisons(database_url)
    for i in range(20):
        writer.record(audit_row(f"good-{i}"))
        if i % 7 == 3:
            name = list(bad)[(i // 7) % len(bad)]
            writer.record(audit_row(f"bad-{i}", bad[name]))
    assert await writer.flush() is True  # not kept for a retry that would fail forever
    assert writer.backlog == 0 and writer.rows_refused == 3
    assert await _trail(db) == sorted(f"good-{i}" for i in range(20))
    writer.record(audit_row("later"))
    await writer.close()
    assert "later" in await _trail(db)


async def test_a_poisoned_write_fails_only_its_own_caller(db, database_url):
    async with db.session() as session:
        owner = await add_user(session, "owner")
        await add_system(session, "rig-1", owner)
    writer = BatchWriter(db, predictions_repo.add_many, name="history")

    def rows(i: int) -> list[dict]:
        row = predictions_repo.row(
            "rig-1", diagnosis(), {"TS1": [1.0]}, trace_id=f"r{i}", source="predict", user_id=owner.id
        )
        if i == 4:  # PostgreSQL: over-long for String(64); both: a system that does not exist
            row |= {"trace_id": "x" * 65} if database_url.startswith("postgresql") else {"system_id": "no-such"}
        return [row, dict(row, trace_id=f"r{i}-second")] if i % 2 else [row]

    results = await asyncio.gather(*(writer.write(rows(i)) for i in range(12)), return_exceptions=True)
    assert isinstance(results[4], StatementError) and refused_for_its_rows(results[4])
    good = [r for i, r in enumerate(results) if i != 4]
    assert all(isinstance(ids, list) and len(ids) == (2 if i % 2 else 1) for i, ids in enumerate(results) if i != 4)
    async with db.session() as session:
        stored = await predictions_repo.page(session, "rig-1", limit=100)
    assert sorted(p.id for p in stored) == sorted(i for ids in good for i in ids)
    assert writer.rows_refused == 1
    await writer.close()


async def test_an_outage_is_not_taken_for_poison(db, tmp_path):
    down = Database(UNREACHABLE)
    writer = BatchWriter(down, audit_repo.add_many, name="audit", spool_dir=tmp_path)
    history = BatchWriter(down, predictions_repo.add_many, name="history")
    try:
        writer.record(audit_row("kept"))
        assert await writer.flush() is False
        assert writer.backlog == 1 and writer.rows_refused == 0
        with pytest.raises(OSError):
            await history.write([{"system_id": "rig-1"}])
        assert history.rows_refused == 0
        writer.db = db  # the database is back
        assert await writer.flush() is True
        assert await _trail(db) == ["kept"]
    finally:
        await writer.close()
        await history.close(attempts=1)
        await down.dispose()


async def test_rows_kept_through_an_outage_survive_a_restart(db, tmp_path):
    down = Database(UNREACHABLE)
    first = BatchWriter(down, audit_repo.add_many, name="audit", spool_dir=tmp_path)
    first.start()
    for i in range(5):
        first.record(audit_row(f"outage-{i}"))
    assert await first.flush() is False
    first.record(audit_row("just-before-shutdown"))  # never tried before close: spooled by close
    # A sibling replica sharing the folder while the first runs takes nothing of its rows.
    sibling = BatchWriter(db, audit_repo.add_many, name="audit", spool_dir=tmp_path)
    sibling.start()
    assert sibling.backlog == 0
    await sibling.close()
    await first.close(attempts=1)  # the database is still down: the rows stay in the spool
    await down.dispose()
    assert await _trail(db) == []
    [spool] = list(tmp_path.glob("audit-*.jsonl"))
    assert len(spool.read_text().splitlines()) == 6

    restarted = BatchWriter(db, audit_repo.add_many, name="audit", spool_dir=tmp_path)
    restarted.start()
    assert restarted.backlog == 6
    assert await restarted.flush() is True
    assert await _trail(db) == sorted([f"outage-{i}" for i in range(5)] + ["just-before-shutdown"])
    async with db.session() as session:
        [row] = await search(session, AuditFilter(trace_id="outage-0"))
    assert row.created_at.tzinfo is not None
    await restarted.close()
    assert list(tmp_path.glob("audit-*.jsonl")) == []  # all written: nothing left to replay


async def test_a_replica_killed_during_an_outage_loses_no_flushed_row(db, tmp_path):
    """More rows than one batch, and no ``close()`` (a kill): every row queued at a failed flush is
    on disk, those recorded later are at the next retry, and the next start replays them all."""
    down = Database(UNREACHABLE)
    killed = BatchWriter(down, audit_repo.add_many, name="audit", max_rows=4, spool_dir=tmp_path)
    killed.start()
    for i in range(10):
        killed.record(audit_row(f"early-{i}"))
    assert await killed.flush() is False  # the first batch of 4 failed; all 10 are spooled
    for i in range(3):
        killed.record(audit_row(f"late-{i}"))
    assert await killed.flush() is False  # the retry spools the 3 recorded since
    [spool] = list(tmp_path.glob("audit-*.jsonl"))
    assert len(spool.read_text().splitlines()) == 13
    killed._spool._file.close()  # what the process's death does: the lock goes, the file stays
    killed._task.cancel()
    await down.dispose()

    restarted = BatchWriter(db, audit_repo.add_many, name="audit", max_rows=4, spool_dir=tmp_path)
    restarted.start()
    assert await restarted.flush() is True
    assert await _trail(db) == sorted([f"early-{i}" for i in range(10)] + [f"late-{i}" for i in range(3)])
    await restarted.close()


def test_connection_errors_are_outages():
    invalidated = DBAPIError("SELECT 1", {}, Exception("connection reset"), connection_invalidated=True)
    assert not refused_for_its_rows(invalidated)
    assert not refused_for_its_rows(ConnectionRefusedError())
    assert refused_for_its_rows(StatementError("bad value", "INSERT", {}, ValueError("naive datetime")))
