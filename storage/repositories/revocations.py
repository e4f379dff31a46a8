"""Revoked access tokens and sessions (``storage.tables.RevokedToken``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import RevokedToken


async def add_revocations(session: AsyncSession, rows: list[tuple[str, str, datetime]]) -> None:
    """Stage ``(kind, token_id, expires_at)`` rows; one already there is kept (revoking twice is fine)."""
    if not rows:
        return
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    values = [{"kind": kind, "token_id": token_id, "expires_at": expires_at} for kind, token_id, expires_at in rows]
    await session.execute(insert(RevokedToken).values(values).on_conflict_do_nothing())


async def unexpired(session: AsyncSession, now: datetime) -> list[tuple[str, str, datetime]]:
    result = await session.execute(
        select(RevokedToken.kind, RevokedToken.token_id, RevokedToken.expires_at).where(RevokedToken.expires_at > now)
    )
    return [tuple(row) for row in result.all()]


async def prune(session: AsyncSession, now: datetime) -> int:
    """Delete revocations whose tokens have expired anyway; returns how many."""
    result = await session.execute(delete(RevokedToken).where(RevokedToken.expires_at <= now))
    return result.rowcount
