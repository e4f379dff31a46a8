from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.tables import MEMBER_PERMISSIONS, System, SystemMember, utcnow


async def create_system(
    session: AsyncSession,
    *,
    system_id: str,
    name: str,
    owner_id: int,
    type: str = "hydraulic_rig",
    location: str | None = None,
    channels: list[dict[str, Any]] | None = None,
    topology: dict[str, Any] | None = None,
    profile: str | None = None,
    profile_reason: str | None = None,
    profile_explicit: bool = False,
) -> System:
    system = System(
        profile=profile,
        profile_reason=profile_reason,
        profile_explicit=profile_explicit,
        id=system_id,
        name=name,
        owner_id=owner_id,
        type=type,
        location=location,
        channels=channels or [],
        topology=topology or {},
    )
    session.add(system)
    await session.flush()
    return system


async def get_system(session: AsyncSession, system_id: str, *, include_deleted: bool = False) -> System | None:
    system = await session.get(System, system_id)
    if system is None or (system.deleted_at is not None and not include_deleted):
        return None
    return system


async def list_systems(session: AsyncSession, *, owner_id: int | None = None) -> Sequence[System]:
    query = select(System).where(System.deleted_at.is_(None)).order_by(System.id)
    if owner_id is not None:
        query = query.where(System.owner_id == owner_id)
    return (await session.scalars(query)).all()


async def soft_delete_system(session: AsyncSession, system: System) -> None:
    system.deleted_at = utcnow()
    await session.flush()


async def grant_membership(
    session: AsyncSession, *, system_id: str, user_id: int, permission: str = "read", granted_by: int | None = None
) -> SystemMember:
    """Grant (or change) a user's access to a system."""
    if permission not in MEMBER_PERMISSIONS:
        raise ValueError(f"permission must be one of {', '.join(MEMBER_PERMISSIONS)}, got {permission!r}")
    member = await get_membership(session, system_id, user_id)
    if member is None:
        member = SystemMember(system_id=system_id, user_id=user_id, permission=permission, granted_by=granted_by)
        session.add(member)
    else:
        member.permission, member.granted_by = permission, granted_by
    await session.flush()
    return member


async def get_membership(session: AsyncSession, system_id: str, user_id: int) -> SystemMember | None:
    return await session.get(SystemMember, (system_id, user_id))


async def revoke_membership(session: AsyncSession, system_id: str, user_id: int) -> bool:
    member = await get_membership(session, system_id, user_id)
    if member is None:
        return False
    await session.delete(member)
    await session.flush()
    return True
