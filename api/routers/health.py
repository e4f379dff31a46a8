"""Liveness and readiness. Neither needs authentication: load balancers call them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.services.diagnosis_client import get_diagnosis

router = APIRouter(prefix="/api/v1", tags=["health"])


@router.get("/health")
async def health() -> dict:
    """The ingress process is up (it says nothing about its dependencies)."""
    return {"status": "ok"}


async def _check(coro, timeout_s: float = 3.0):
    try:
        return await asyncio.wait_for(coro, timeout_s), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Every part the API needs: database, cache, each model deployment and its version.

    503 names what is down. A down cache alone is ``degraded``, not unready:
    predictions go on uncached.
    """
    state = request.app.state
    diagnosis = get_diagnosis(request)
    db_ok, db_err = await _check(state.db.ping())
    cache_ok, cache_err = await _check(diagnosis.cache_healthy())
    models, models_err = await _check(diagnosis.models_info(), 10.0)
    checks = {
        "database": {"ok": bool(db_ok), **({"error": db_err} if db_err else {})},
        "cache": {
            "ok": bool(cache_ok),
            "backend": "redis" if state.settings.redis_url else "in-process",
            **({"error": cache_err} if cache_err else {}),
        },
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
    status = "unready" if failing else ("degraded" if not cache_ok else "ready")
    body = {"status": status, "failing": failing, "checks": checks}
    return JSONResponse(body, status_code=503 if failing else 200, headers={"Retry-After": "5"} if failing else None)
