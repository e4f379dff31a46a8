"""/api/v1/users/me: who the caller is, their tier's limits and their usage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import PrincipalDep, SessionDep
from api.errors import error_responses
from api.schemas.users import Limits, MeOut, UsageOut
from auth.rate_limits import RateLimiter, subject
from storage.repositories import usage as usage_repo

router = APIRouter(prefix="/api/v1/users", tags=["users"])


@router.get("/me", response_model=MeOut)
async def me(request: Request, principal: PrincipalDep) -> MeOut:
    tier = request.app.state.rate_limiter.tier(principal.tier)
    return MeOut(
        id=principal.user_id,
        username=principal.username,
        role=principal.role,
        tier=tier.name,
        via=principal.via,
        api_key_id=principal.api_key_id,
        limits=Limits(tier=tier.name, per_minute=tier.per_minute, window_s=tier.window_s, daily_quota=tier.daily_quota),
    )


@router.get("/me/usage", response_model=UsageOut, responses=error_responses(422))
async def my_usage(
    request: Request, principal: PrincipalDep, session: SessionDep, days: Annotated[int, Query(ge=1, le=90)] = 7
) -> UsageOut:
    """Calls by endpoint per UTC day (this API key's only, when called with one) and today's quota left."""
    limiter: RateLimiter = request.app.state.rate_limiter
    quota = await limiter.quota(subject(principal), principal.tier)
    since = usage_repo.days_ago(datetime.now(UTC), days)
    calls = await usage_repo.calls_by_day_and_route(
        session, user_id=principal.user_id, since=since, api_key_id=principal.api_key_id
    )
    return UsageOut(**quota, calls=calls)
