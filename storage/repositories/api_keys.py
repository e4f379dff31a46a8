from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import ApiKey, utcnow


async def create_api_key(
    session: AsyncSession,
    *,
    prefix: str,
    key_hash: str,
    name: str,
    user_id: int,
    system_scope: list[str],
    tier: str,
) -> ApiKey:
    key = ApiKey(
        prefix=prefix, key_hash=key_hash, name=name, user_id=user_id, system_scope=list(system_scope), tier=tier
    )
    session.add(key)
    await session.flush()
    return key


async def get_api_key(session: AsyncSession, key_id: int) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def get_api_key_by_prefix(session: AsyncSession, prefix: str) -> ApiKey | None:
    return await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


async def list_api_keys(session: AsyncSession, user_id: int | None = None) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return (await session.scalars(query)).all()


async def revoke_api_key(session: AsyncSession, key_id: int) -> bool:
    """Revoke; False when there is no such key or it was already revoked."""
    result = await session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount == 1


async def touch_api_key(session: AsyncSession, key: ApiKey, when: datetime) -> None:
    key.last_used_at = when
    await session.flush()
