"""/api/v1/systems: the equipment registry and who may reach each system."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from sqlalchemy import func, or_, select

from api.deps import (
    PrincipalDep,
    SessionDep,
    get_access_cache,
    require_role,
    system_access,
    system_write_access,
    unscoped_key,
)
from api.errors import Conflict, Forbidden, InvalidInput, NotFound, error_responses
from api.schemas.inputs import IdPath, Offset
from api.schemas.systems import MemberIn, MemberOut, SystemCreate, SystemOut, SystemPage, SystemUpdate, channel_specs
from api.services import profile_choice
from auth.principal import Principal
from auth.roles import Action, Role
from storage.repositories import systems as systems_repo
from storage.repositories import users as users_repo
from storage.tables import System, SystemMember, User

router = APIRouter(prefix="/api/v1/systems", tags=["systems"])
log = logging.getLogger("hdx.systems")

WriterDep = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.ENGINEER))]
# A route on one system: unknown or deleted (404), not the caller's to use (403), an invalid id (422).
ONE_SYSTEM = error_responses(403, 404, 422)
ONE_SYSTEM_WITH_BODY = error_responses(403, 404, 413, 422)


def _out(system: System) -> SystemOut:
    return SystemOut.model_validate(system)


def _visible(principal: Principal):
    """The systems query restricted to what the caller may see (not deleted; owned, shared or all for admins;
    an API key only its scope)."""
    query = select(System).where(System.deleted_at.is_(None))
    if not principal.allows(Action.SEE_ALL_SYSTEMS):
        shared = select(SystemMember.system_id).where(SystemMember.user_id == principal.user_id)
        query = query.where(or_(System.owner_id == principal.user_id, System.id.in_(shared)))
    if principal.system_scope is not None:
        query = query.where(System.id.in_(sorted(principal.system_scope)))
    return query


def _require_owner(principal: Principal, system: System) -> None:
    """Deleting a system and sharing it belong to its owner (and admins), not to every writer."""
    if principal.allows(Action.SEE_ALL_SYSTEMS):
        return
    if system.owner_id != principal.user_id or not principal.allows(Action.MANAGE_MEMBERS):
        raise Forbidden(f"only the owner of system {system.id!r} or an admin may do this")


@router.post(
    "", response_model=SystemOut, status_code=status.HTTP_201_CREATED, responses=error_responses(403, 409, 413, 422)
)
async def create_system(
    body: SystemCreate,
    request: Request,
    principal: WriterDep,
    session: SessionDep,
    _unscoped: Annotated[Principal, Depends(unscoped_key("registering a system"))],
) -> SystemOut:
    """Register a system; the caller owns it (admins may name another owner). Not with an API key
    scoped to systems: the new one would be outside its scope."""
    owner_id = principal.user_id
    if body.owner_id is not None and body.owner_id != principal.user_id:
        if not principal.allows(Action.SEE_ALL_SYSTEMS):
            raise Forbidden("only admins may register a system for another user")
        if await users_repo.get_user(session, body.owner_id) is None:
            raise InvalidInput(["body", "owner_id"], f"user {body.owner_id} does not exist")
        owner_id = body.owner_id
    if await systems_repo.get_system(session, body.id, include_deleted=True) is not None:
        # Deleted ids stay taken: their history, audit trail and feedback still name them.
        raise Conflict(f"system id {body.id!r} is already taken")
    choice = await profile_choice.choose(request, body.channels, body.profile)
    system = await systems_repo.create_system(
        session,
        system_id=body.id,
        name=body.name,
        owner_id=owner_id,
        type=body.type,
        location=body.location,
        channels=channel_specs(body.channels),
        topology=body.topology.model_dump(by_alias=True, exclude_none=True),
        profile=choice.profile,
        profile_reason=choice.reason,
        profile_explicit=body.profile is not None,
    )
    await session.commit()
    return _out(system)


@router.get("", response_model=SystemPage, responses=error_responses(422))
async def list_systems(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> SystemPage:
    """The systems the caller may see, by id."""
    query = _visible(principal)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = (await session.scalars(query.order_by(System.id).limit(limit).offset(offset))).all()
    return SystemPage(items=[_out(s) for s in rows], total=total, limit=limit, offset=offset)


@router.get("/{system_id}", response_model=SystemOut, responses=ONE_SYSTEM)
async def get_system(system: Annotated[System, Depends(system_access)]) -> SystemOut:
    return _out(system)


@router.patch("/{system_id}", response_model=SystemOut, responses=ONE_SYSTEM_WITH_BODY)
async def update_system(
    body: SystemUpdate,
    request: Request,
    system: Annotated[System, Depends(system_write_access)],
    session: SessionDep,
) -> SystemOut:
    """Only the fields given change. New channels, or a new ``profile`` (null: choose
    automatically), choose the system's profile again."""
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "type", "location"):
        if field in changes:
            if changes[field] is None and field != "location":
                raise InvalidInput(["body", field], f"{field} cannot be null")
            setattr(system, field, changes[field])
    if body.channels is not None:
        system.channels = channel_specs(body.channels)
    if body.topology is not None:
        system.topology = body.topology.model_dump(by_alias=True, exclude_none=True)
    if body.channels is not None or "profile" in changes:
        explicit = changes["profile"] if "profile" in changes else (system.profile if system.profile_explicit else None)
        choice = await profile_choice.choose(request, [c["name"] for c in system.channels], explicit)
        system.profile, system.profile_reason, system.profile_explicit = choice.profile, choice.reason, bool(explicit)
    await session.commit()
    get_access_cache(request).clear()  # the diagnosis routes cache what a system is diagnosed with
    return _out(system)


@router.delete("/{system_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ONE_SYSTEM)
async def delete_system(
    request: Request,
    principal: PrincipalDep,
    system: Annotated[System, Depends(system_write_access)],
    session: SessionDep,
) -> Response:
    """Soft delete: the system disappears from the API; its history stays for the audit trail."""
    _require_owner(principal, system)
    await systems_repo.soft_delete_system(session, system)
    await session.commit()
    get_access_cache(request).clear()
    log.info("system %s deleted by user %s", system.id, principal.username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{system_id}/members", response_model=list[MemberOut], responses=ONE_SYSTEM)
async def list_members(system: Annotated[System, Depends(system_access)], session: SessionDep) -> list[MemberOut]:
    rows = (
        await session.execute(
            select(SystemMember, User.username)
            .join(User, User.id == SystemMember.user_id)
            .where(SystemMember.system_id == system.id)
            .order_by(User.username)
        )
    ).all()
    return [
        MemberOut(
            user_id=m.user_id, username=name, permission=m.permission, granted_by=m.granted_by, created_at=m.created_at
        )
        for m, name in rows
    ]


@router.post(
    "/{system_id}/members",
    response_model=MemberOut,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(403, 404, 409, 413, 422),
)
async def grant_member(
    request: Request,
    body: MemberIn,
    principal: PrincipalDep,
    system: Annotated[System, Depends(system_write_access)],
    session: SessionDep,
) -> MemberOut:
    """Grant a user read or write access (or change it)."""
    _require_owner(principal, system)
    user = await users_repo.get_user_by_username(session, body.username)
    if user is None:
        raise NotFound(f"user {body.username!r} not found")
    if user.id == system.owner_id:
        raise Conflict(f"{body.username!r} owns system {system.id!r} already")
    member = await systems_repo.grant_membership(
        session, system_id=system.id, user_id=user.id, permission=body.permission, granted_by=principal.user_id
    )
    await session.commit()
    get_access_cache(request).clear()  # a write grant may have become read-only
    return MemberOut(
        user_id=user.id,
        username=user.username,
        permission=member.permission,
        granted_by=member.granted_by,
        created_at=member.created_at,
    )


@router.delete("/{system_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ONE_SYSTEM)
async def revoke_member(
    request: Request,
    user_id: IdPath,
    principal: PrincipalDep,
    system: Annotated[System, Depends(system_write_access)],
    session: SessionDep,
) -> Response:
    _require_owner(principal, system)
    if not await systems_repo.revoke_membership(session, system.id, user_id):
        raise NotFound(f"user {user_id} is not a member of {system.id!r}")
    await session.commit()
    get_access_cache(request).clear()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
