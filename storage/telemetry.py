"""Prometheus counters and histograms that work inside Ray and outside it.

Inside a Ray worker (a Serve replica, a Ray task) they are ``ray.serve.metrics``
objects: Ray's metrics agent exports them on each node's metrics port with a
``ray_`` prefix, and inside a replica Serve adds the deployment, replica and
application tags. Outside Ray (the CLI, plain unit tests) there is no agent to
export to, so a no-op is returned and the values are dropped.

Create them when a component starts (a replica's ``__init__``, an app's first
request), not at import time: one made before Ray is up stays a no-op.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Protocol

LATENCY_BOUNDARIES_MS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]


class CounterLike(Protocol):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...


class HistogramLike(Protocol):
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class NoopCounter:
    def __init__(self, name: str) -> None:
        self.name = name

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass


class NoopHistogram:
    def __init__(self, name: str) -> None:
        self.name = name

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never import Ray just to find out it is not running
    return ray is not None and ray.is_initialized()


def make_counter(name: str, description: str, tag_keys: tuple[str, ...] = ()) -> CounterLike:
    if not _ray_running():
        return NoopCounter(name)
    from ray.serve.metrics import Counter

    return Counter(name, description=description, tag_keys=tag_keys)


def make_histogram(
    name: str, description: str, tag_keys: tuple[str, ...] = (), boundaries: Sequence[float] = LATENCY_BOUNDARIES_MS
) -> HistogramLike:
    if not _ray_running():
        return NoopHistogram(name)
    from ray.serve.metrics import Histogram

    return Histogram(name, description=description, boundaries=list(boundaries), tag_keys=tag_keys)
