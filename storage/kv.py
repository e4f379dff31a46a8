"""A small key-value store with TTLs and counters.

Used for token revocation and login throttling (later also the prediction cache
and rate limits). ``RedisKV`` is shared by all replicas; ``MemoryKV`` is the
embedded default and only sees its own process.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as redis

if TYPE_CHECKING:
    from configs.settings import Settings

DEFAULT_PREFIX = "hdx:"
log = logging.getLogger(__name__)


class KV(Protocol):
    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def incr(self, key: str, ttl_s: float | None = None) -> int: ...
    async def ttl(self, key: str) -> float | None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class RedisKV:
    """Keys live under ``prefix`` so several apps (or test runs) can share one Redis."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, **redis_options) -> None:
        if not prefix:
            raise ValueError("RedisKV needs a non-empty key prefix")
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, decode_responses=True, **redis_options)

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str) -> str | None:
        return await self._redis.get(self._key(key))

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        await self._redis.set(self._key(key), value, px=_millis(ttl_s) if ttl_s is not None else None)

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._key(key))

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        """Increment; the TTL is set by the first increment only (a fixed window)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(self._key(key))
            if ttl_s is not None:
                pipe.pexpire(self._key(key), _millis(ttl_s), nx=True)
            count, *_ = await pipe.execute()
        return int(count)

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None when it is missing or never expires."""
        millis = await self._redis.pttl(self._key(key))
        return millis / 1000 if millis >= 0 else None

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (redis.RedisError, OSError):
            return False

    async def clear(self) -> None:
        """Delete every key under this prefix (and nothing else)."""
        async for key in self._redis.scan_iter(match=self.prefix + "*", count=500):
            await self._redis.delete(key)

    async def close(self) -> None:
        await self._redis.aclose()


class MemoryKV:
    """In-process store with lazy expiry; single event loop, so no locking is needed."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, float | None]] = {}

    def _live(self, key: str) -> tuple[str, float | None] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= time.monotonic():
            del self._data[key]
            return None
        return entry

    async def get(self, key: str) -> str | None:
        entry = self._live(key)
        return entry[0] if entry else None

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._data[key] = (value, _deadline(ttl_s))

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        entry = self._live(key)
        count = int(entry[0]) + 1 if entry else 1
        deadline = entry[1] if entry and entry[1] is not None else _deadline(ttl_s)
        self._data[key] = (str(count), deadline)
        return count

    async def ttl(self, key: str) -> float | None:
        entry = self._live(key)
        if entry is None or entry[1] is None:
            return None
        return max(entry[1] - time.monotonic(), 0.0)

    async def ping(self) -> bool:
        return True

    async def clear(self) -> None:
        self._data.clear()

    async def close(self) -> None:
        self._data.clear()


def _millis(ttl_s: float) -> int:
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    return max(int(ttl_s * 1000), 1)


def _deadline(ttl_s: float | None) -> float | None:
    return time.monotonic() + _millis(ttl_s) / 1000 if ttl_s is not None else None


class FailSoftKV:
    """Wraps a shared store so that its outage degrades instead of failing requests.

    While Redis is unreachable, reads find nothing, writes are dropped and
    counters read 0: revocation and throttling are not enforced for that time
    (they fail open), predictions go on uncached, and ``healthy`` is False so
    ``/ready`` reports the service as degraded. Each outage is logged once.
    """

    def __init__(self, inner: RedisKV) -> None:
        self.inner = inner
        self.healthy = True

    async def _call(self, method: str, *args, default=None, **kwargs):
        try:
            result = await getattr(self.inner, method)(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            if self.healthy:
                log.warning("shared key-value store unavailable, degrading: %s", exc)
            self.healthy = False
            return default
        self.healthy = True
        return result

    async def get(self, key: str) -> str | None:
        return await self._call("get", key)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        await self._call("set", key, value, ttl_s)

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        return await self._call("incr", key, ttl_s, default=0)

    async def ttl(self, key: str) -> float | None:
        return await self._call("ttl", key)

    async def ping(self) -> bool:
        self.healthy = await self.inner.ping()
        return self.healthy

    async def clear(self) -> None:
        await self._call("clear")

    async def close(self) -> None:
        await self.inner.close()


def make_kv(settings: Settings, prefix: str = DEFAULT_PREFIX) -> KV:
    """Redis (failing soft) when ``settings.redis_url`` is set, else the in-process store."""
    if settings.redis_url:
        return FailSoftKV(RedisKV(settings.redis_url, prefix=prefix, socket_timeout=0.5, socket_connect_timeout=0.5))
    return MemoryKV()
