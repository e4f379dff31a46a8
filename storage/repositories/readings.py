"""Ingested cycles. Inserts skip keys already stored, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import Reading

_DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


async def insert_new(session: AsyncSession, system_id: str, cycles: Sequence[dict[str, Any]]) -> set[str]:
    """Insert ``cycles`` (idempotency_key, started_at, sensor_data); return the keys that were new.

    One statement for the whole batch; keys already stored for the system are left
    untouched, so a retried batch stores nothing twice. The caller commits.
    """
    if not cycles:
        return set()
    insert = _DIALECT_INSERTS[session.bind.dialect.name]
    rows = [{"system_id": system_id, **c} for c in cycles]
    statement = insert(Reading).values(rows).on_conflict_do_nothing().returning(Reading.idempotency_key)
    return set((await session.scalars(statement)).all())


async def latest(session: AsyncSession, system_id: str) -> Reading | None:
    query = select(Reading).where(Reading.system_id == system_id)
    return await session.scalar(query.order_by(Reading.started_at.desc()).limit(1))


async def in_range(
    session: AsyncSession,
    system_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[Reading]:
    """Readings with ``start <= started_at < end``, oldest first."""
    query = select(Reading).where(Reading.system_id == system_id)
    if start is not None:
        query = query.where(Reading.started_at >= start)
    if end is not None:
        query = query.where(Reading.started_at < end)
    query = query.order_by(Reading.started_at, Reading.idempotency_key).limit(limit).offset(offset)
    return (await session.scalars(query)).all()


async def count(session: AsyncSession, system_id: str) -> int:
    return await session.scalar(select(func.count()).select_from(Reading).where(Reading.system_id == system_id))
