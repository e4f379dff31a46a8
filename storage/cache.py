"""The prediction cache: Redis when configured, a bounded in-process LRU otherwise.

The key covers the cycle's channel values *and* the model versions that
would answer, so a rollout can never serve a prediction made by the old
models. A cache that fails (Redis down) turns into a miss and says so through
``healthy``; it never fails a prediction.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from configs.settings import Settings
from storage.kv import FailSoftKV, make_kv


def cache_key(cycle: Mapping[str, np.ndarray], feature_set: str, versions: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    h.update(feature_set.encode())
    h.update(json.dumps(sorted(versions.items())).encode())
    for name in sorted(cycle):
        h.update(name.encode())
        h.update(np.ascontiguousarray(cycle[name], dtype=np.float64).tobytes())
    return "pred:" + h.hexdigest()


class LRUCache:
    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._data: OrderedDict[str, str] = OrderedDict()
        self.healthy = True

    async def get(self, key: str) -> dict | None:
        value = self._data.get(key)
        if value is None:
            return None
        self._data.move_to_end(key)
        return json.loads(value)

    async def set(self, key: str, value: dict, ttl_s: int) -> None:
        self._data[key] = json.dumps(value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

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
