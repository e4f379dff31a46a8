"""The FastAPI application served by the ingress deployment.

``create_app`` is called inside each ingress replica: it wires the routers,
the request-id and body-size middleware and error handlers, and on start-up
runs database migrations and opens the key-value store. The deployment puts
its handles (``ensemble``, ``rag``) on ``app.state``.
"""

from __future__ import annotations

import contextvars
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from configs.settings import Settings, get_settings

trace_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")
TRACE_HEADER = "X-Request-ID"


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
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body exceeds {self.max_bytes} bytes"}, status_code=413)
        await response({"type": "http"}, None, send)


def _error_body(request: Request, detail) -> dict:
    return {"detail": detail, "trace_id": getattr(request.state, "trace_id", trace_id_var.get())}


def create_app(settings: Settings | None = None, echo_request_id: bool = True) -> FastAPI:
    """``echo_request_id=False`` under Ray Serve, whose proxy already assigns the
    request id (or keeps the client's) and puts it on the response."""
    settings = settings or get_settings()
    settings.effective_jwt_secret()  # refuse to start with a missing or default secret

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from storage.db import Database, migrate
        from storage.kv import make_kv

        await migrate(settings.database_url)
        app.state.db = Database(settings.database_url)
        app.state.kv = make_kv(settings)
        try:
            yield
        finally:
            await app.state.kv.close()
            await app.state.db.dispose()

    app = FastAPI(
        title="HDX hydraulic diagnostics",
        version="1.0",
        description="Diagnosis of hydraulic components and a maintenance assistant, served on Ray Serve.",
        lifespan=lifespan,
        docs_url="/docs",
    )
    app.state.settings = settings

    @app.middleware("http")
    async def trace_requests(request: Request, call_next):
        trace_id = request.headers.get(TRACE_HEADER) or uuid.uuid4().hex
        request.state.trace_id = trace_id
        token = trace_id_var.set(trace_id)
        try:
            response = await call_next(request)
        finally:
            trace_id_var.reset(token)
        if echo_request_id:
            response.headers[TRACE_HEADER] = trace_id
        return response

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(_error_body(request, exc.detail), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(_error_body(request, errors), status_code=422)

    from api.routers import auth, diagnostics, health, models

    for module in (health, auth, diagnostics, models):
        app.include_router(module.router)
    try:
        from api.routers import rag
    except ImportError:  # the assistant is optional in a deployment without its packages
        rag = None
    if rag is not None:
        app.include_router(rag.router)
    return app
