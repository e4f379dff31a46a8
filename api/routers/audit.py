"""/api/v1/audit: the audit trail, for admins, and not with an API key scoped to systems (the trail
covers every system and user)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.deps import SessionDep, require_role, unscoped_key
from api.errors import error_responses
from api.schemas.audit import AuditPage, AuditRecordOut
from api.schemas.inputs import DbInt, Offset, SystemId, TraceId, Username, UtcDatetime, token
from auth.roles import Role
from storage.repositories.audit import AuditFilter, search

RouteTemplate = token(200)
router = APIRouter(
    prefix="/api/v1/audit",
    tags=["audit"],
    dependencies=[Depends(require_role(Role.ADMIN)), Depends(unscoped_key("the audit trail"))],
    responses=error_responses(403, 422),
)


@router.get("", response_model=AuditPage)
async def list_audit(
    session: SessionDep,
    user_id: DbInt | None = None,
    username: Username | None = None,
    route: Annotated[
        RouteTemplate | None, Query(description="route template, e.g. /api/v1/systems/{system_id}")
    ] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    outcome: Annotated[str | None, Query(pattern="^(ok|error|auth_failed|denied|rate_limited)$")] = None,
    system_id: SystemId | None = None,
    trace_id: TraceId | None = None,
    start: UtcDatetime | None = None,
    end: UtcDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> AuditPage:
    """API calls, newest first; every given filter must match (``start <= time < end``)."""
    f = AuditFilter(
        user_id=user_id,
        username=username,
        route=route,
        status=status,
        outcome=outcome,
        system_id=system_id,
        trace_id=trace_id,
        start=start,
        end=end,
    )
    rows = await search(session, f, limit=limit, offset=offset)
    return AuditPage(items=[AuditRecordOut.model_validate(r) for r in rows], limit=limit, offset=offset)
