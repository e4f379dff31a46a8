"""Turning an exception from another deployment into one readable line."""

from __future__ import annotations

import asyncio


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: last line of the message``; a ``RayTaskError`` is unwrapped to the
    replica's own exception, so clients read "model file corrupted", not a
    remote traceback."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout: no answer in time"
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:limit]
