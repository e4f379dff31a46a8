"""Failures of the diagnosis path that callers map to answers (``api.errors``)."""

from __future__ import annotations

import asyncio


class NoModelAvailable(RuntimeError):
    """No model family answered for a cycle that could be diagnosed."""


class ModelCannotLearn(RuntimeError):
    """Feedback sent to a model family that does not learn online."""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: last line of the message``. An error raised in another Ray process
    (``RayTaskError``) is unwrapped to the original exception (its ``cause``), so
    clients read "model file corrupted", not a remote traceback."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout: no answer in time"
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:limit]
