"""Metric counters that work inside Ray and outside it.

Inside a Ray worker (a Serve replica, a Ray task) counters are
``ray.util.metrics.Counter`` and reach Prometheus via Ray's metrics agent.
Outside Ray (CLI, plain unit tests) there is no agent to export to, so a
no-op counter is returned and the counts are dropped.
"""

from __future__ import annotations

import sys
from typing import Protocol


class CounterLike(Protocol):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...


class NoopCounter:
    def __init__(self, name: str) -> None:
        self.name = name

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass


def make_counter(name: str, description: str, tag_keys: tuple[str, ...] = ()) -> CounterLike:
    """Create counters when the component starts (e.g. in a replica's __init__),
    not at import time: a counter made before Ray is up stays a no-op."""
    ray = sys.modules.get("ray")  # never import Ray just to find out it is not running
    if ray is None or not ray.is_initialized():
        return NoopCounter(name)
    from ray.util.metrics import Counter

    return Counter(name, description=description, tag_keys=tag_keys)
