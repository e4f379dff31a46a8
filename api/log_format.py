"""Structured logs: one JSON object per line, each with the request's trace id.

``configure_logging`` attaches the formatter to the ``hdx`` logger tree (the
platform's own loggers: ``hdx.access``, ``hdx.audit``, ``hdx.systems``, …). The
trace id comes from ``trace_id_var``, set per request by the app's
middleware, so a line logged anywhere while serving a request carries it.
Under Ray Serve these lines land in the replica's worker log files.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "trace_id"}
HDX_LOGGER = "hdx"
# Set per request by the app's middleware (api.application.RequestObserver).
trace_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")


class TraceIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            record.trace_id = trace_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "trace_id", ...extra}``; extras are what
    callers pass with ``extra={...}`` (route, status, latency_ms, …)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", "-"),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(json_lines: bool = True, stream=None) -> logging.Handler:
    """Idempotent: a second call (another app in the same process) replaces the handler."""
    logger = logging.getLogger(HDX_LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_hdx", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._hdx = True  # type: ignore[attr-defined]
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(trace_id)s] %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # one line per event, not a second copy through the root logger
    return handler
