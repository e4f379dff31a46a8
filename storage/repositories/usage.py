"""API usage per caller, counted from the audit trail (the one record of every call)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import AuditRecord


def _utc_day(dialect: str):
    """``YYYY-MM-DD`` of ``created_at`` in UTC, in the database's own date functions."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", AuditRecord.created_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", AuditRecord.created_at)  # SQLite stores the UTC time as text


async def calls_by_day_and_route(
    session: AsyncSession, *, user_id: int, since: datetime, api_key_id: int | None = None
) -> dict[str, dict[str, int]]:
    """``{"YYYY-MM-DD": {"POST /api/v1/...": n}}`` for the user's (or one API key's) calls since ``since``.

    Counted by the database: a busy caller has millions of rows in 90 days, and only
    (day, endpoint, count) triples come back.
    """
    day = _utc_day(session.get_bind().dialect.name).label("day")
    query = (
        select(day, AuditRecord.method, AuditRecord.route, func.count())
        .where(AuditRecord.user_id == user_id, AuditRecord.created_at >= since)
        .group_by(day, AuditRecord.method, AuditRecord.route)
    )
    if api_key_id is not None:
        query = query.where(AuditRecord.api_key_id == api_key_id)
    out: dict[str, dict[str, int]] = {}
    for day_text, method, route, calls in (await session.execute(query)).all():
        out.setdefault(day_text, {})[f"{method} {route}"] = calls
    return dict(sorted(out.items(), reverse=True))


def days_ago(now: datetime, days: int) -> datetime:
    """Midnight UTC ``days - 1`` days before ``now`` (so ``days=1`` is today)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=days - 1)
