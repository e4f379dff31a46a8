"""The audit trail's records: one per API call, built from the finished request.

``entry`` is called by the app's middleware for every call but the load-balancer
probes (``UNAUDITED_PATHS``); the record goes to ``app.state.audit``, a
``storage.batch_writer.BatchWriter`` that writes it off the request path, every
``audit_flush_interval_s``, keeping it through a database outage.

Who called is read from ``request.state.principal``, which
``api.deps.current_principal`` sets on every route that authenticates; a 401
there is recorded as ``auth_failed``. ``created_at`` is the time of the call,
not of the write.

Every text field is ``fit`` to its column: a path or path parameter is whatever a
client sent (``GET /%00`` included), and one value PostgreSQL refuses must not
cost the trail a batch.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from auth.principal import Principal
from storage.tables import utcnow

UNAUDITED_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})  # load-balancer probes, every few seconds
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def fit(value: Any, limit: int) -> str | None:
    """``value`` as text for a ``String(limit)`` column: control characters written as ``\\xNN``
    (kept visible for whoever reads the trail), characters UTF-8 cannot encode escaped, cut to ``limit``."""
    if value is None:
        return None
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)[:limit]


def outcome(status: int) -> str:
    if status == 401:
        return "auth_failed"
    if status == 403:
        return "denied"
    if status == 429:
        return "rate_limited"
    return "ok" if status < 400 else "error"


def route_template(request: Request) -> str:
    """``/api/v1/systems/{system_id}`` rather than the concrete path: groups calls per endpoint."""
    route = request.scope.get("route")
    # Unmatched paths (404s, scanners) share one label, so metrics stay bounded; ``path`` keeps the detail.
    return getattr(route, "path", None) or "<unmatched>"


def entry(request: Request, status: int, latency_ms: float) -> dict[str, Any]:
    """The row for ``storage.tables.AuditRecord``."""
    principal: Principal | None = getattr(request.state, "principal", None)
    system_id = request.scope.get("path_params", {}).get("system_id") or getattr(request.state, "system_id", None)
    client = request.client.host if request.client else None
    return {
        "created_at": utcnow(),
        "user_id": principal.user_id if principal else None,
        "username": fit(principal.username, 64) if principal else None,
        "api_key_id": principal.api_key_id if principal else None,
        "method": fit(request.method, 8),
        "route": fit(route_template(request), 200),
        "path": fit(request.url.path, 500),
        "status": status,
        "outcome": outcome(status),
        "latency_ms": round(latency_ms, 3),
        "system_id": fit(system_id, 64) if system_id else None,
        "trace_id": fit(getattr(request.state, "trace_id", "-"), 64),
        "client": fit(client, 64) if client else None,
    }
