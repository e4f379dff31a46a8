"""API usage per caller, counted from the audit trail (the one record of every call)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import AuditRecord


async def calls_by_day_and_route(
    session: AsyncSession, *, user_id: int, since: datetime, api_key_id: int | None = None
) -> dict[str, dict[str, int]]:
    """``{"YYYY-MM-DD": {"POST /api/v1/...": n}}`` for the user's (or one API key's) calls since ``since``.

    Days are grouped in Python: the date functions of SQLite and PostgreSQL differ, and
    the rows are already reduced to (timestamp, route) pairs per caller.
    """
    query = select(AuditRecord.created_at, AuditRecord.method, AuditRecord.route).where(
        AuditRecord.user_id == user_id, AuditRecord.created_at >= since
    )
    if api_key_id is not None:
        query = query.where(AuditRecord.api_key_id == api_key_id)
    out: dict[str, dict[str, int]] = {}
    for created_at, method, route in (await session.execute(query)).all():
        day = out.setdefault(created_at.date().isoformat(), {})
        endpoint = f"{method} {route}"
        day[endpoint] = day.get(endpoint, 0) + 1
    return dict(sorted(out.items(), reverse=True))


def days_ago(now: datetime, days: int) -> datetime:
    """Midnight UTC ``days - 1`` days before ``now`` (so ``days=1`` is today)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=days - 1)
