from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import RefreshToken, utcnow


async def add_refresh_token(
    session: AsyncSession, *, jti: str, family_id: str, user_id: int, expires_at: datetime
) -> RefreshToken:
    token = RefreshToken(jti=jti, family_id=family_id, user_id=user_id, expires_at=expires_at)
    session.add(token)
    await session.flush()
    return token


async def get_refresh_token(session: AsyncSession, jti: str) -> RefreshToken | None:
    return await session.get(RefreshToken, jti)


async def mark_used(session: AsyncSession, jti: str) -> bool:
    """Atomically claim a refresh token; False if it was already used or revoked.

    A conditional UPDATE rather than read-then-write, so two concurrent refreshes
    with the same token cannot both succeed.
    """
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.jti == jti, RefreshToken.used_at.is_(None), RefreshToken.revoked_at.is_(None))
        .values(used_at=utcnow())
    )
    return result.rowcount == 1


async def revoke_family(session: AsyncSession, family_id: str) -> int:
    """Revoke every not-yet-revoked token of a login session; returns how many."""
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount
