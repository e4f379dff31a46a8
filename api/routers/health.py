"""Liveness and readiness. Neither needs authentication: load balancers call them.

Without credentials ``/ready`` names what is down and nothing more: an exception's
text can carry a database URI, a Redis address or a file path, which an
anonymous caller must not learn. A valid admin bearer token gets the details.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import get_auth_service
from api.services.diagnosis_client import get_diagnosis
from auth.roles import Role
from auth.tokens import TokenError
from storage.repositories import users as users_repo

router = APIRouter(prefix="/api/v1", tags=["health"])


@router.get("/health")
async def health() -> dict:
    """The ingress process is up (it says nothing about its dependencies)."""
    return {"status": "ok"}


async def _check(coro, timeout_s: float = 3.0):
    try:
        return await asyncio.wait_for(coro, timeout_s), None
    except TimeoutError:
        return None, "timed out"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


async def _is_admin(request: Request) -> bool:
    """Whether the caller sent a valid bearer token of an active admin; anything else is anonymous."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    try:
        claims = await (await get_auth_service(request)).verify_access_token(token.strip())
        async with request.app.state.db.sessionmaker() as session:
            user = await users_repo.get_user(session, claims.user_id)
    except TokenError:
        return False
    except Exception:  # the database is down: a probe never fails on credentials, it shows less
        return False
    return user is not None and user.is_active and user.role == Role.ADMIN


def _kv_check(state) -> dict:
    """The key-value store (revocation fast path, throttling, rate limits) and its circuit breaker."""
    kv = state.kv
    breaker = getattr(kv, "breaker", None)
    if breaker is None:
        return {"ok": True, "backend": "in-process", "state": "closed"}
    return {"ok": kv.healthy, "backend": "redis", "state": breaker.state, "_details": breaker.info()}


def _public(checks: dict) -> dict:
    """What an anonymous caller may see: each part's ok, backend, state and versions, no error texts."""
    out = {}
    for name, check in checks.items():
        if name == "models":
            out[name] = (
                {"ok": False, "error": "unavailable"}
                if "error" in check and len(check) == 1
                else {m: {"ok": "error" not in i, "version": i.get("version")} for m, i in check.items()}
            )
            continue
        public = {k: v for k, v in check.items() if not k.startswith("_") and "error" not in k}
        if "error" in check:
            public["error"] = "timed out" if check["error"] == "timed out" else "unavailable"
        out[name] = public
    return out


def _detailed(checks: dict) -> dict:
    out = {name: dict(check) for name, check in checks.items()}
    if "_details" in out.get("kv", {}):
        out["kv"].update(out["kv"].pop("_details"))
    return out


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unready"]
    failing: list[str] = Field(description="parts that are down: the service cannot answer (503)")
    degraded: list[str] = Field(description="parts that are down while the service still answers (cache, kv)")
    checks: dict[str, Any] = Field(description="each part's state; error details for admins only")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Unready: ``failing`` names what is down"}},
)
async def ready(request: Request) -> JSONResponse:
    """Every part the API needs: database, cache, key-value store, each model deployment and its version.

    503 names what is down. A down cache or key-value store (Redis, its breaker
    open) alone is ``degraded``, not unready: predictions go on uncached, login
    throttling counts per replica and revocations are read from the database.
    """
    state = request.app.state
    diagnosis = get_diagnosis(request)
    db_ok, db_err = await _check(state.db.ping())
    cache_ok, cache_err = await _check(diagnosis.cache_healthy())
    models, models_err = await _check(diagnosis.models_info(), 10.0)
    if hasattr(state.kv, "breaker"):
        await _check(state.kv.ping())  # through the breaker: fails fast while open, probes after the cool-down
    checks = {
        "database": {"ok": bool(db_ok), **({"error": db_err or "unavailable"} if not db_ok else {})},
        "cache": {
            "ok": bool(cache_ok),
            "backend": "redis" if state.settings.redis_url else "in-process",
            **({"error": cache_err} if cache_err else {}),
        },
        "kv": _kv_check(state),
        "models": models or {"error": models_err},
    }
    failing = [] if db_ok else ["database"]
    if models is None:
        failing.append("ensemble")
    else:
        failing += [f"model:{name}" for name, info in models.items() if "error" in info]
    if getattr(state, "rag", None) is not None:
        rag, rag_err = await _check(state.rag.info.remote())
        checks["assistant"] = {"ok": True, **rag} if rag_err is None else {"ok": False, "error": rag_err}
        if rag_err:
            failing.append("assistant")
    degraded = [name for name in ("cache", "kv") if not checks[name]["ok"]]
    status = "unready" if failing else ("degraded" if degraded else "ready")
    shown = _detailed(checks) if await _is_admin(request) else _public(checks)
    body = {"status": status, "failing": failing, "degraded": degraded, "checks": shown}
    return JSONResponse(body, status_code=503 if failing else 200, headers={"Retry-After": "5"} if failing else None)
