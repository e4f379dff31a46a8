"""The prediction cache: Redis when configured, a bounded in-process LRU otherwise.

The key covers the cycle's channel values, the model versions that would
answer *and* the learned-state revisions of the families that learn, so neither
a rollout nor an update from feedback can serve a prediction made before it.
Entries expire after their TTL in both caches. A cache that fails (Redis down) turns into a miss and says so through
``healthy``; it never fails a prediction.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping

import numpy as np
from cachetools import TLRUCache

from configs.settings import Settings
from storage.kv import FailSoftKV, make_kv


def cache_key(
    cycle: Mapping[str, np.ndarray],
    feature_set: str,
    versions: Mapping[str, str],
    state_revisions: Mapping[str, str] | None = None,
) -> str:
    h = hashlib.sha256()
    h.update(feature_set.encode())
    h.update(json.dumps(sorted(versions.items())).encode())
    h.update(json.dumps(sorted((state_revisions or {}).items())).encode())
    for name in sorted(cycle):
        h.update(name.encode())
        h.update(np.ascontiguousarray(cycle[name], dtype=np.float64).tobytes())
    return "pred:" + h.hexdigest()


class LRUCache:
    """At most ``max_entries``, least recently used out first; each entry expires
    ``ttl_s`` after it was set. ``timer`` is the clock (seconds)."""

    def __init__(self, max_entries: int = 10_000, timer: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        # Values are (ttl_s, json); the cache reads each entry's expiry from its ttl.
        self._data: TLRUCache[str, tuple[float, str]] = TLRUCache(
            max_entries, ttu=lambda _key, value, now: now + value[0], timer=timer
        )
        self.healthy = True

    def __len__(self) -> int:
        self._data.expire()
        return len(self._data)

    async def get(self, key: str) -> dict | None:
        entry = self._data.get(key)
        return None if entry is None else json.loads(entry[1])

    async def set(self, key: str, value: dict, ttl_s: int) -> None:
        self._data[key] = (ttl_s, json.dumps(value))

    async def ping(self) -> bool:
        return True


class SharedCache:
    """The cache on the shared key-value store (Redis); a store outage is a miss."""

    def __init__(self, kv: FailSoftKV):
        self._kv = kv

    @property
    def healthy(self) -> bool:
        return self._kv.healthy

    async def get(self, key: str) -> dict | None:
        value = await self._kv.get(key)
        return None if value is None else json.loads(value)

    async def set(self, key: str, value: dict, ttl_s: int) -> None:
        await self._kv.set(key, json.dumps(value), ttl_s=ttl_s)

    async def ping(self) -> bool:
        return await self._kv.ping()


def make_cache(settings: Settings) -> LRUCache | SharedCache:
    if settings.redis_url:
        return SharedCache(make_kv(settings))
    return LRUCache(settings.cache_max_entries)
