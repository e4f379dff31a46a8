"""How the API answers a failure: every exception handler of the app, in one place.

Routes and dependencies raise typed errors and let them go; ``install_error_handlers``
(called by ``api.application.create_app``) turns each into its answer, always the
body ``{"detail": ..., "trace_id": ...}``:

* the API's own refusals (``NotFound``, ``Forbidden``, ``Conflict``, ``BadRequest``,
  ``InvalidInput``, ``Unavailable``) → their status;
* ``auth.service.AuthError`` → its status and headers; a 401 also carries the
  ``WWW-Authenticate: Bearer`` challenge;
* ``hydraulics.validation.SensorDataError`` → 422 naming the channel at fault, in the
  shape of a request validation error;
* ``diagnosis.failures.NoModelAvailable`` and Ray Serve's "cannot take this now" errors
  (queue full, deployment or replica gone or stopped, from any handle: the ensemble
  or the assistant) → 503 with ``Retry-After``: the reason in
  one line (``describe``), not the remote traceback;
* a database outage (``storage.db.unavailable``: the server down, restarting, out of
  connections) → 503 with ``Retry-After``; any other database error stays a 500;
* FastAPI's ``HTTPException`` (still raised where the answer is HTTP through and
  through: the rate limit's 429 with its ``X-RateLimit-*`` headers) and
  ``RequestValidationError`` (each error cut to ``loc``, ``msg`` and ``type``).

The OpenAPI document declares these answers from here too: a route (or router) names
the statuses it can answer with ``error_responses(403, 404, ...)``, which gives each
the body's schema (``ErrorBody``) and what it means, so generated clients handle them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.log_format import trace_id_var
from auth.service import AuthError
from diagnosis.failures import NoModelAvailable, describe
from hydraulics.validation import SensorDataError
from storage.db import unavailable as database_unavailable

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
UNAVAILABLE_RETRY_S = "5"
# No model answered, a deployment's queue is full, or it (or the replica picked) is gone or stopped:
# try again later. ``RayActorError`` covers ``ActorDiedError`` and ``ActorUnavailableError``.
UNAVAILABLE = (NoModelAvailable, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, RayActorError)
# What a database outage raises: SQLAlchemy's errors, and asyncpg's bare socket errors on connect.
DATABASE_ERRORS = (SQLAlchemyError, ConnectionError, TimeoutError, socket.gaierror)
log = logging.getLogger("hdx.errors")


class ApiError(Exception):
    """A request the API refuses; ``detail`` is what the client reads."""

    status_code = 400

    def __init__(self, detail: str | list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(ApiError):
    status_code = 400


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class InvalidInput(ApiError):
    """A value the request schema cannot check (it depends on settings or the database),
    answered like a validation error of that field."""

    status_code = 422

    def __init__(self, loc: Sequence[str | int], msg: str, type: str = "value_error") -> None:
        super().__init__([{"loc": list(loc), "msg": msg, "type": type}])


class Unavailable(ApiError):
    """A part of the service this request needs is not there."""

    status_code = 503


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path or header, then the field")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The body of every refusal."""

    detail: str | list[ValidationIssue] = Field(description="why: a sentence, or one entry per invalid field (422)")
    trace_id: str = Field(description="this request's id, as in the X-Request-ID response header and the logs")


def _retry_after(what: str) -> dict[str, Any]:
    return {"Retry-After": {"description": what, "schema": {"type": "integer"}}}


_ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    400: {"description": "Bad request (for one, an X-Request-ID header that is not 1-64 of A-Z a-z 0-9 . _ -)"},
    401: {
        "description": "Missing, malformed, expired or revoked credentials",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    },
    403: {"description": "The caller's role, system permission or API key scope does not allow this"},
    404: {"description": "No such resource, or one that was deleted"},
    409: {"description": "Conflicts with what exists"},
    413: {"description": "The request body is larger than the service accepts"},
    422: {"description": "Invalid input: one entry per field at fault"},
    429: {
        "description": "Over the rate limit, daily quota or login throttle",
        "headers": _retry_after("seconds until a retry can succeed"),
    },
    503: {
        "description": "A part of the service this request needs is unavailable; nothing was done, try again",
        "headers": _retry_after("seconds to wait before trying again"),
    },
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router that can answer with these statuses (each with ``ErrorBody``)."""
    return {code: {"model": ErrorBody, **_ERROR_RESPONSES[code]} for code in status_codes}


def error_body(request: Request, detail: Any) -> dict[str, Any]:
    return {"detail": detail, "trace_id": getattr(request.state, "trace_id", trace_id_var.get())}


def _answer(request: Request, status_code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(request, detail), status_code=status_code, headers=headers or None)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _answer(request, exc.status_code, exc.detail, exc.headers)


async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
    headers = {**BEARER_CHALLENGE, **exc.headers} if exc.status_code == 401 else exc.headers
    return _answer(request, exc.status_code, exc.detail, headers)


async def _sensor_data_error(request: Request, exc: SensorDataError) -> JSONResponse:
    loc = ["body", "sensor_data"] + ([exc.channel] if exc.channel else [])
    return _answer(request, 422, [{"loc": loc, "msg": str(exc), "type": "sensor_data"}])


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Serve's own errors keep their sentence in ``message``; their ``str`` is only the id.
    message = getattr(exc, "message", None)
    detail = f"{type(exc).__name__}: {message}" if isinstance(message, str) else describe(exc, limit=1000)
    return _answer(request, 503, detail, {"Retry-After": UNAVAILABLE_RETRY_S})


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # A deployment's error re-raised here (a RayTaskError is also an instance of its cause) is not
    # the database's; nor is an error of the statement: both stay the 500 of an unhandled error.
    if isinstance(exc, RayError) or not database_unavailable(exc):
        raise exc
    # The reason goes to the log only: it names the server's address.
    first_line = next(iter(str(exc).strip().splitlines()), "")  # SQLAlchemy's last line is a link
    log.warning("database unavailable: %s: %s", type(exc).__name__, first_line[:300])
    return _answer(request, 503, "the database is unavailable; try again", {"Retry-After": UNAVAILABLE_RETRY_S})


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _answer(request, exc.status_code, exc.detail, getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return _answer(request, 422, errors)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler above on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(SensorDataError, _sensor_data_error)
    for error in UNAVAILABLE:
        app.add_exception_handler(error, _unavailable)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
