"""The audit trail: written in batches by a ``storage.batch_writer.BatchWriter`` (``add_many``), read by admins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import AuditRecord


async def add_many(session: AsyncSession, records: Sequence[dict[str, Any]]) -> None:
    """One multi-row insert; the caller commits."""
    if records:
        await session.execute(insert(AuditRecord), list(records))


@dataclass(frozen=True)
class AuditFilter:
    user_id: int | None = None
    username: str | None = None
    route: str | None = None
    status: int | None = None
    outcome: str | None = None
    system_id: str | None = None
    trace_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None


async def search(session: AsyncSession, f: AuditFilter, *, limit: int = 100, offset: int = 0) -> Sequence[AuditRecord]:
    """Newest first; every given field must match (``start <= created_at < end``)."""
    query = select(AuditRecord)
    for column, value in (
        (AuditRecord.user_id, f.user_id),
        (AuditRecord.username, f.username),
        (AuditRecord.route, f.route),
        (AuditRecord.status, f.status),
        (AuditRecord.outcome, f.outcome),
        (AuditRecord.system_id, f.system_id),
        (AuditRecord.trace_id, f.trace_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if f.start is not None:
        query = query.where(AuditRecord.created_at >= f.start)
    if f.end is not None:
        query = query.where(AuditRecord.created_at < f.end)
    query = query.order_by(AuditRecord.created_at.desc(), AuditRecord.id.desc()).limit(limit).offset(offset)
    return (await session.scalars(query)).all()
