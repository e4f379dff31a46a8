"""FastAPI dependencies: where every request is authenticated, authorised and counted.

Shared services are read from ``request.app.state`` (set by the ingress at start,
or by tests): ``db`` (storage.db.Database), ``kv`` (storage.kv.KV), ``settings``
and ``rate_limiter`` (auth.rate_limits.RateLimiter); ``auth``
(auth.service.AuthService) is created on first use. Refusals are raised as typed
errors (``auth.service.AuthError``, ``api.errors.Forbidden``, ...), which
``api.errors`` answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import Forbidden, InvalidInput, NotFound
from api.request_metrics import get_metrics
from api.schemas.inputs import SystemIdPath
from auth.access_cache import AccessCache, CachedUser
from auth.api_keys import ApiKeyError, hash_key, verify_api_key
from auth.principal import Principal, can_access_system
from auth.rate_limits import Decision, RateLimiter, subject
from auth.roles import Role
from auth.service import AuthError, AuthService
from auth.tokens import TokenError
from diagnosis.profiles import DiagnosisTarget
from hydraulics.components import COMPONENTS
from storage.repositories import systems as systems_repo
from storage.repositories import users as users_repo
from storage.tables import System

# Declared for the OpenAPI docs ("Authorize" button); the headers are checked below.
bearer_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False)


async def get_auth_service(request: Request) -> AuthService:
    # async, although it awaits nothing: FastAPI runs a plain ``def`` dependency in a
    # thread pool, a thread hop on every request.
    state = request.app.state
    if getattr(state, "auth", None) is None:
        state.auth = AuthService(state.kv, state.settings, db=state.db)
    return state.auth


def get_access_cache(request: Request) -> AccessCache:
    state = request.app.state
    if getattr(state, "access_cache", None) is None:
        state.access_cache = AccessCache(state.settings.access_cache_ttl_s)
    return state.access_cache


async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.db.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db_session)]
AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


async def current_principal(
    request: Request,
    session: SessionDep,
    auth: AuthServiceDep,
    _bearer: Annotated[str | None, Depends(bearer_scheme)],
    x_api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <jwt>`` or ``X-API-Key: hdx_...``; ``AuthError`` (401) otherwise.

    The principal is also left on ``request.state`` for the audit record and the rate limit.
    """
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("malformed Authorization header; expected 'Bearer <token>'")
        principal = await _principal_from_token(session, auth, get_access_cache(request), token.strip())
    elif x_api_key is not None:
        principal = await _principal_from_api_key(session, get_access_cache(request), x_api_key.strip())
    else:
        raise AuthError("missing credentials; send 'Authorization: Bearer <token>' or 'X-API-Key: <key>'")
    request.state.principal = principal
    return principal


async def _principal_from_token(session: AsyncSession, auth: AuthService, cache: AccessCache, token: str) -> Principal:
    try:
        claims = await auth.verify_access_token(token)  # signature, expiry, revocation: every call
    except TokenError as error:
        raise AuthError(str(error)) from error
    user = cache.get("user", claims.user_id)
    if user is None:
        row = await users_repo.get_user(session, claims.user_id)
        if row is None or not row.is_active:
            raise AuthError("token's user no longer exists or is disabled")
        user = cache.put("user", claims.user_id, CachedUser(row.id, row.username, row.role, row.tier))
    # Role and tier come from the database (within the access cache's TTL), not the token,
    # so a change applies without a new login.
    return Principal(user.id, user.username, Role(user.role), user.tier, via="jwt", token=claims)


async def _principal_from_api_key(session: AsyncSession, cache: AccessCache, plaintext: str) -> Principal:
    key_hash = hash_key(plaintext)
    principal = cache.get("api_key", key_hash)
    if principal is not None:
        return principal
    try:
        key, owner = await verify_api_key(session, plaintext)
    except ApiKeyError as error:
        raise AuthError(str(error)) from error
    await session.commit()  # last_used_at
    return cache.put(
        "api_key",
        key_hash,
        Principal(
            owner.id,
            owner.username,
            Role(owner.role),
            key.tier,
            via="api_key",
            api_key_id=key.id,
            system_scope=frozenset(key.system_scope),
        ),
    )


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role | str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets only the given roles through (403 for others)."""
    allowed = {Role(role) for role in roles}

    async def dependency(principal: PrincipalDep) -> Principal:
        if principal.role not in allowed:
            needed = " or ".join(sorted(allowed))
            raise Forbidden(f"this needs the {needed} role; you are {principal.role}")
        return principal

    return dependency


async def _system_verdict(
    session: AsyncSession, principal: Principal, system_id: str, *, write: bool
) -> tuple[System, bool]:
    """The system and whether the caller may change it; 404 when it is unknown or deleted, 403 when the
    caller may not use it (with ``write``: may not change it)."""
    system = await systems_repo.get_system(session, system_id)
    if system is None:
        raise NotFound(f"system {system_id!r} not found")
    membership = await systems_repo.get_membership(session, system_id, principal.user_id)
    may_write = can_access_system(principal, system, membership, write=True)
    if not (may_write or (not write and can_access_system(principal, system, membership))):
        out_of_scope = principal.system_scope is not None and system_id not in principal.system_scope
        scope = " (outside this API key's scope)" if out_of_scope else ""
        action = "change" if write else "access"
        raise Forbidden(f"you may not {action} system {system_id!r}{scope}")
    return system, may_write


def diagnosis_target(system: System) -> DiagnosisTarget:
    """The system's profile (422 when none fits its channels) and the components its topology has."""
    if system.channels and not system.profile:
        raise InvalidInput(["system", "profile"], f"system {system.id!r} cannot be diagnosed: {system.profile_reason}")
    kinds = {n.get("kind") for n in (system.topology or {}).get("nodes", [])}
    components = sorted(kinds & set(COMPONENTS)) if kinds else None
    return DiagnosisTarget(profile=system.profile, components=components)


async def load_accessible_system(
    session: AsyncSession, principal: Principal, system_id: str, *, write: bool = False
) -> System:
    """The system, or 404 when it is unknown or deleted, or 403 when the caller may not use it."""
    system, _ = await _system_verdict(session, principal, system_id, write=write)
    return system


async def authorize_system(
    request: Request, session: AsyncSession, principal: Principal, system_id: str
) -> tuple[bool, DiagnosisTarget]:
    """``load_accessible_system``'s verdict for the diagnosis routes: whether the caller may
    also change the system (a read-only member's diagnoses are answered, not stored), and
    what to diagnose it with (its profile and components). Both are remembered in the
    access cache (a changed system is seen within its TTL)."""
    cache = get_access_cache(request)
    key = (principal.user_id, principal.role, principal.api_key_id, principal.system_scope, system_id)
    verdict = cache.get("grant", key)
    if verdict is None:
        system, may_write = await _system_verdict(session, principal, system_id, write=False)
        verdict = cache.put("grant", key, (may_write, diagnosis_target(system)))
    return verdict


async def system_access(system_id: SystemIdPath, principal: PrincipalDep, session: SessionDep) -> System:
    """For routes with a ``{system_id}`` path parameter: ``system: System = Depends(system_access)``."""
    return await load_accessible_system(session, principal, system_id)


async def system_write_access(system_id: SystemIdPath, principal: PrincipalDep, session: SessionDep) -> System:
    return await load_accessible_system(session, principal, system_id, write=True)


def unscoped_key(what: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency for what no single system's scope covers (the audit trail, registering a system):
    only logins pass. Every API key is scoped to systems (``auth.api_keys``), so every key gets 403,
    an admin's too, whatever its scope; an older key stored with no systems is scoped to none."""

    async def dependency(principal: PrincipalDep) -> Principal:
        if principal.via == "api_key" or principal.system_scope is not None:
            scope = ", ".join(sorted(principal.system_scope or ())) or "no systems"
            raise Forbidden(f"this API key is scoped to {scope}; {what} needs a login (API keys are scoped to systems)")
        return principal

    return dependency


# --- rate limits --------------------------------------------------------------------------------
def decision_headers(decision: Decision) -> dict[str, str]:
    headers = {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_s),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


async def enforce_rate_limit(request: Request, principal: PrincipalDep) -> None:
    """The dependency on every limited router (``api.application``): 429 with ``Retry-After``
    when the caller is over its tier's rate limit or daily quota."""
    limiter: RateLimiter = request.app.state.rate_limiter
    decision = await limiter.check(subject(principal), principal.tier)
    request.state.rate_limit = decision
    if not decision.allowed:
        tier = limiter.tier(principal.tier)
        get_metrics().rate_limited.inc(tags={"reason": decision.reason, "tier": tier.name})
        what = (
            f"rate limit of {decision.limit} calls per {tier.window_s} s"
            if decision.reason == "rate_limit"
            else f"daily quota of {tier.daily_quota} calls"
        )
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"{what} exceeded for tier {tier.name!r}; retry in {decision.retry_after_s} s",
            headers=decision_headers(decision),
        )


def rate_limit_headers(request: Request) -> dict[str, str]:
    """The ``X-RateLimit-*`` headers of this request's decision (none before the check ran);
    the app's middleware puts them on every response."""
    decision: Decision | None = getattr(request.state, "rate_limit", None)
    return decision_headers(decision) if decision is not None else {}
