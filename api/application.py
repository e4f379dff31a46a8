"""The FastAPI application served by the ingress deployment.

``create_app`` is called inside each ingress replica with the settings the app
builder read: it wires the routers, the request-id and body-size middleware and
the error handlers (``api.errors``), and on start-up runs database migrations,
opens the key-value store and starts the two batched writers (audit trail,
prediction history). The deployment puts its handles (``ensemble``, ``rag``) on
``app.state``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.audit_records import UNAUDITED_PATHS, entry
from api.deps import enforce_rate_limit, rate_limit_headers
from api.errors import error_body, error_responses, install_error_handlers
from api.log_format import configure_logging, trace_id_var
from api.request_metrics import get_metrics
from auth.rate_limits import RateLimiter, load_tiers
from configs.settings import Settings
from storage.batch_writer import BatchWriter
from storage.db import Database, migrate
from storage.kv import make_kv
from storage.payload_log import PayloadLog
from storage.repositories import audit as audit_repo
from storage.repositories import predictions as predictions_repo

TRACE_HEADER = "X-Request-ID"
# A client's id is kept only when it is a short, plain token: it goes into logs, response headers
# and String(64) columns (audit, history), and one over-long id must not fail a group commit.
TRACE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def trace_id_of(request: Request) -> tuple[str, str | None]:
    """The request's trace id and, when the client's ``X-Request-ID`` is not a safe token,
    why it was refused (the request then gets a 400 under a fresh id). Refused rather than
    silently replaced: under Ray Serve the proxy echoes the client's header as sent, so a
    replaced id would differ between the response header and the body."""
    sent = request.headers.get(TRACE_HEADER)
    if not sent:
        return uuid.uuid4().hex, None
    if TRACE_ID.fullmatch(sent):
        return sent, None
    return uuid.uuid4().hex, f"{TRACE_HEADER} must be 1-64 characters of A-Z a-z 0-9 . _ - (got {len(sent)} characters)"


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 for bodies over the limit, whether or not the client declared a length."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen, too_large, started = 0, False, False

        async def limited_receive():
            nonlocal seen, too_large
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                too_large = True
                raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's own answer to the cut-off body (FastAPI's is a 400); the 413 is below
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if too_large and not started:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        # The error body of every refusal; the trace id is the one RequestObserver (outside) set.
        body = {"detail": f"request body exceeds {self.max_bytes} bytes", "trace_id": trace_id_var.get()}
        await JSONResponse(body, status_code=413)({"type": "http"}, None, send)


class RequestObserver:
    """Every HTTP request: a trace id (the client's ``X-Request-ID`` if safe, or a new one) on
    ``request.state`` and in the logs, rate-limit headers on the response, and on the
    way out the audit record, metrics and access-log line (``observe``).

    A plain ASGI middleware: ``BaseHTTPMiddleware`` would add a task and a body
    stream to every request."""

    def __init__(self, app: ASGIApp, observe, echo_request_id: bool):
        self.app, self.observe, self.echo_request_id = app, observe, echo_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        trace_id, refused = trace_id_of(request)
        request.state.trace_id = trace_id
        token = trace_id_var.set(trace_id)
        start = time.perf_counter()
        status_code = 500  # what the client gets if the app raises

        async def send_with_headers(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in rate_limit_headers(request).items():
                    headers[name] = value
                if self.echo_request_id:
                    headers[TRACE_HEADER] = trace_id
            await send(message)

        try:
            if refused:
                await JSONResponse(error_body(request, refused), status_code=400)(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            self.observe(request, status_code, (time.perf_counter() - start) * 1000)
            trace_id_var.reset(token)


def create_app(settings: Settings, echo_request_id: bool = True) -> FastAPI:
    """``echo_request_id=False`` under Ray Serve, whose proxy already assigns the
    request id (or keeps the client's) and puts it on the response."""
    settings.effective_jwt_secret()  # refuse to start with a missing or default secret

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await migrate(settings.database_url)
        app.state.db = Database(settings.database_url)
        app.state.kv = make_kv(settings)
        app.state.rate_limiter = RateLimiter(app.state.kv, tiers, settings.memory_kv_max_entries)
        # Off the request path: the trail every flush interval, kept through an outage (on local
        # disk too, so a restart during one loses nothing); the history with group commit, each
        # request waiting for its own ids.
        app.state.audit = BatchWriter(
            app.state.db,
            audit_repo.add_many,
            name="audit",
            max_rows=1000,
            flush_interval_s=settings.audit_flush_interval_s,
            spool_dir=settings.audit_spool_dir or settings.home / "spool",
        )
        app.state.audit.start()  # writes what an earlier run left in the spool
        app.state.history = BatchWriter(app.state.db, predictions_repo.add_many, name="history", max_rows=500)
        app.state.payloads = PayloadLog(
            settings.payload_log_uri,
            settings.payload_log_sample,
            flush_interval_s=settings.payload_log_flush_s,
            max_buffered_bytes=int(settings.payload_log_max_buffered_mb * 2**20),
        )
        app.state.payloads.start()

        async def latest_diagnosis(system_id: str) -> dict | None:
            async with app.state.db.sessionmaker() as session:
                return await predictions_repo.latest_prediction(session, system_id)

        app.state.latest_diagnosis = latest_diagnosis  # the assistant's hook (api/routers/rag.py)
        try:
            yield
        finally:
            await app.state.history.close()
            await app.state.audit.close()  # before the database goes: nothing recorded is lost
            await app.state.payloads.close()
            await app.state.kv.close()
            await app.state.db.dispose()

    app = FastAPI(
        title="HDX hydraulic diagnostics",
        version="1.0",
        description="Diagnosis of hydraulic components and a maintenance assistant, served on Ray Serve.",
        lifespan=lifespan,
        docs_url="/docs",
        responses=error_responses(400),  # any route: a malformed X-Request-ID (RequestObserver)
    )
    app.state.settings = settings
    tiers = load_tiers(settings.tiers_path)  # a bad tiers file stops the start, with the reason
    configure_logging(settings.log_json)
    observe = _observer()

    # The last added runs first: every request, a 413 too, gets its trace id, audit record and metrics.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestObserver, observe=observe, echo_request_id=echo_request_id)
    install_error_handlers(app)

    from api.routers import (
        audit,
        auth,
        diagnostics,
        feedback,
        health,
        history,
        ingestion,
        model_info,
        rag,
        systems,
        users,
    )

    limited = [Depends(enforce_rate_limit)]
    for module in (health, auth):  # probes and login: no caller to count yet
        app.include_router(module.router)
    for module in (diagnostics, model_info, systems, history, feedback, ingestion, audit, users, rag):
        # Every limited route needs credentials (401), counts against the caller's limits (429)
        # and reads the database (503 while it is unavailable).
        app.include_router(module.router, dependencies=limited, responses=error_responses(401, 429, 503))
    return app


def _observer():
    """What every request leaves behind: an audit record, metrics and one access-log line."""
    access_log = logging.getLogger("hdx.access")

    def observe(request: Request, status_code: int, latency_ms: float) -> None:
        if request.url.path in UNAUDITED_PATHS:
            return
        record = entry(request, status_code, latency_ms)
        writer = getattr(request.app.state, "audit", None)
        if writer is not None:
            writer.record(record)
        metrics = get_metrics()
        metrics.requests.inc(tags={"route": record["route"], "method": record["method"], "status": str(status_code)})
        metrics.request_latency.observe(latency_ms, tags={"route": record["route"], "method": record["method"]})
        if status_code == 401:
            metrics.auth_failures.inc(tags={"route": record["route"]})
        access_log.info(
            "%s %s %d",
            record["method"],
            record["path"],
            status_code,
            extra={
                k: record[k] for k in ("route", "status", "outcome", "latency_ms", "username", "system_id", "client")
            },
        )

    return observe
