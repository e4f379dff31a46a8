"""Waiting for a freshly deployed HDX app, shared by the benchmarks and the Serve tests."""

from __future__ import annotations

import time

import httpx


def wait_ready(base: str, timeout_s: float = 120) -> None:
    """Poll ``GET /api/v1/ready`` until it answers 200; raise with the last answer otherwise."""
    deadline = time.time() + timeout_s
    last: object = None
    while time.time() < deadline:
        try:
            last = httpx.get(f"{base}/api/v1/ready", timeout=15)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"HDX app at {base} not ready after {timeout_s:g} s: {getattr(last, 'text', last)}")
