"""A small key-value store with TTLs and counters.

Used for the fast path of token revocation, login throttling, rate limits and
the prediction cache. ``RedisKV`` is shared by all replicas (behind the circuit
breaker of ``FailSoftKV``); ``MemoryKV`` is the embedded default, bounded, and
only sees its own process.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as redis
from cachetools import TLRUCache

if TYPE_CHECKING:
    from configs.settings import Settings

DEFAULT_PREFIX = "hdx:"
# DECRBY, and a count that is no longer positive is deleted in the same step: never left below
# zero without an expiry, and never deleted under a concurrent increment.
_DECR_SCRIPT = """
local n = redis.call('DECRBY', KEYS[1], ARGV[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
"""
log = logging.getLogger(__name__)


class KV(Protocol):
    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def incr(self, key: str, ttl_s: float | None = None) -> int: ...
    async def decr(self, key: str, amount: int = 1) -> int: ...
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

    async def decr(self, key: str, amount: int = 1) -> int:
        """Take ``amount`` off a counter, keeping its window; one that reaches 0 is deleted. The count left."""
        return max(int(await self._redis.eval(_DECR_SCRIPT, 1, self._key(key), amount)), 0)

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None when it is missing or never expires."""
        millis = await self._redis.pttl(self._key(key))
        return millis / 1000 if millis >= 0 else None

    async def check(self) -> bool:
        """Ping, raising why Redis does not answer."""
        return bool(await self._redis.ping())

    async def ping(self) -> bool:
        try:
            return await self.check()
        except (redis.RedisError, OSError):
            return False

    async def clear(self) -> None:
        """Delete every key under this prefix (and nothing else)."""
        async for key in self._redis.scan_iter(match=self.prefix + "*", count=500):
            await self._redis.delete(key)

    async def close(self) -> None:
        await self._redis.aclose()


class MemoryKV:
    """In-process store; single event loop, so no locking is needed.

    Memory is bounded: expired entries are evicted whenever an entry is written
    (cachetools' ``TLRUCache`` keeps them in expiry order), and past
    ``max_entries`` the least recently used entry goes. Every user-minute window,
    unknown-username login and logout writes an entry, so without both an
    unattended replica would grow for ever.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: TLRUCache = TLRUCache(max_entries, ttu=_time_to_use, timer=time.monotonic)

    def __len__(self) -> int:
        return len(self._data)  # live entries only: counting expires the rest

    async def get(self, key: str) -> str | None:
        entry = self._data.get(key)
        return entry[0] if entry else None

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._data[key] = (value, _deadline(ttl_s))

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        entry = self._data.get(key)
        count = int(entry[0]) + 1 if entry else 1
        deadline = entry[1] if entry and entry[1] is not None else _deadline(ttl_s)
        self._data[key] = (str(count), deadline)
        return count

    async def decr(self, key: str, amount: int = 1) -> int:
        entry = self._data.get(key)
        count = (int(entry[0]) if entry else 0) - amount
        if count <= 0:
            self._data.pop(key, None)
            return 0
        self._data[key] = (str(count), entry[1])
        return count

    async def ttl(self, key: str) -> float | None:
        entry = self._data.get(key)
        if entry is None or entry[1] is None:
            return None
        return max(entry[1] - time.monotonic(), 0.0)

    async def ping(self) -> bool:
        return True

    async def clear(self) -> None:
        self._data.clear()

    async def close(self) -> None:
        self._data.clear()


def _time_to_use(_key: str, entry: tuple[str, float | None], _now: float) -> float:
    return math.inf if entry[1] is None else entry[1]


def _millis(ttl_s: float) -> int:
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    return max(int(ttl_s * 1000), 1)


def _deadline(ttl_s: float | None) -> float | None:
    return time.monotonic() + _millis(ttl_s) / 1000 if ttl_s is not None else None


class CircuitBreaker:
    """Cuts calls to a failing or slow dependency off for a cool-down, then probes it.

    ``closed``: calls go through. A failure, or ``slow_calls_to_open`` calls in a row
    slower than ``slow_call_s`` (one slow call may be this process's busy event loop,
    not the store), opens it. ``open``: calls are refused at once (``allow`` is False) for
    ``cooldown_s``. Then ``half_open``: one probe call goes through (others are still
    refused); its success closes the breaker, its failure opens it again. Small
    enough to read in one go; pybreaker's async support needs Tornado and
    aiobreaker is unmaintained.
    """

    def __init__(
        self, cooldown_s: float = 5.0, slow_call_s: float = 0.3, slow_calls_to_open: int = 3, clock=time.monotonic
    ) -> None:
        self.cooldown_s, self.slow_call_s, self.clock = cooldown_s, slow_call_s, clock
        self.slow_calls_to_open = slow_calls_to_open
        self._slow_streak = 0
        self.state = "closed"
        self.opened_at: float | None = None
        self.last_error: str | None = None  # internal detail: for logs and admins only
        self.rejected_calls = 0
        self._probing = False

    def allow(self) -> bool:
        if self.state == "open" and self.clock() - self.opened_at >= self.cooldown_s:
            self.state, self._probing = "half_open", False
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        self.rejected_calls += 1
        return False

    def record(self, elapsed_s: float, error: str | None = None) -> None:
        self._probing = False
        if error is None and elapsed_s > self.slow_call_s:
            self._slow_streak += 1
            if self._slow_streak >= self.slow_calls_to_open or self.state == "half_open":
                error = f"{self._slow_streak} slow calls in a row, the last {elapsed_s:.3f} s > {self.slow_call_s} s"
        elif error is None:
            self._slow_streak = 0
        if error is None:
            if self.state != "closed":
                log.info("shared key-value store is back")
            self.state, self.opened_at = "closed", None
            return
        if self.state == "closed":  # once per outage, not per failed probe
            log.warning("shared key-value store unavailable, cut off for %.1f s: %s", self.cooldown_s, error)
        self.state, self.opened_at, self.last_error = "open", self.clock(), error
        self._slow_streak = 0

    def abandon(self) -> None:
        """The call ``allow`` let through ended without an answer (cancelled): a probe may go again."""
        self._probing = False

    def info(self) -> dict:
        return {"state": self.state, "rejected_calls": self.rejected_calls, "last_error": self.last_error}


class FailSoftKV:
    """Wraps a shared store so that its outage degrades instead of failing requests.

    A ``CircuitBreaker`` stands in front of Redis: after a failure or a slow call,
    calls are not sent for a cool-down (no socket timeout paid per request), then
    one probes again. While it is open or a call fails, reads find nothing, writes
    are dropped and counters read 0, meaning *not counted*: counters that limit
    (rate limits, login throttling) then count in their own replica instead
    (``FallbackCounter``). Revocations are durable in the database
    (``auth.revocations``), so they hold through an outage. ``healthy`` is False
    meanwhile, so ``/ready`` reports the service as degraded.
    """

    def __init__(self, inner: RedisKV, breaker: CircuitBreaker | None = None) -> None:
        self.inner = inner
        self.breaker = breaker or CircuitBreaker()

    @property
    def healthy(self) -> bool:
        return self.breaker.state == "closed"

    @property
    def state(self) -> str:
        return self.breaker.state

    async def _call(self, method: str, *args, default=None):
        if not self.breaker.allow():
            return default
        start = time.monotonic()
        try:
            result = await getattr(self.inner, method)(*args)
        except (redis.RedisError, OSError) as exc:
            self.breaker.record(time.monotonic() - start, f"{type(exc).__name__}: {exc}")
            return default
        except BaseException:  # cancelled: without this a half-open breaker would wait for it for ever
            self.breaker.abandon()
            raise
        self.breaker.record(time.monotonic() - start)
        return result

    async def get(self, key: str) -> str | None:
        return await self._call("get", key)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        await self._call("set", key, value, ttl_s)

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def incr(self, key: str, ttl_s: float | None = None) -> int:
        return await self._call("incr", key, ttl_s, default=0)

    async def decr(self, key: str, amount: int = 1) -> int:
        return await self._call("decr", key, amount, default=0)

    async def ttl(self, key: str) -> float | None:
        return await self._call("ttl", key)

    async def ping(self) -> bool:
        """Through the breaker: while it is open this answers False at once, and the
        ping after the cool-down is the probe."""
        return bool(await self._call("check", default=False))

    async def clear(self) -> None:
        await self._call("clear")

    async def close(self) -> None:
        await self.inner.close()


class FallbackCounter:
    """Counters that go on counting in this process's memory while the shared store is down.

    ``FailSoftKV`` answers an ``incr`` it could not make with 0; a limit counted that way
    would be off for the outage. Here such a count is made in a bounded in-process store
    instead, so the limit holds per replica until Redis is back. The counts are not merged
    afterwards: a per-minute window is over by then, and a day's quota counted during an
    outage is lenient by what Redis did not see."""

    def __init__(self, shared: KV, max_entries: int = 100_000) -> None:
        self.shared = shared
        self.local = MemoryKV(max_entries)

    async def incr(self, key: str, ttl_s: float | None = None) -> tuple[int, KV]:
        """One more under ``key``: the count, and the store that counted it."""
        count = await self.shared.incr(key, ttl_s=ttl_s)
        if count:
            return count, self.shared
        return await self.local.incr(key, ttl_s=ttl_s), self.local


def make_kv(settings: Settings, prefix: str = DEFAULT_PREFIX) -> KV:
    """Redis (failing soft) when ``settings.redis_url`` is set, else the in-process store.

    The in-process store is only this process's: a second ingress replica would
    count its own login failures and rate limits, so without Redis the builder caps
    the Ingress to one replica and a second one refuses to start
    (``deployments.ingress.require_sole_replica``).
    """
    if settings.redis_url:
        timeout = settings.kv_timeout_s
        return FailSoftKV(
            RedisKV(settings.redis_url, prefix=prefix, socket_timeout=timeout, socket_connect_timeout=timeout),
            CircuitBreaker(cooldown_s=settings.kv_breaker_cooldown_s, slow_call_s=settings.kv_slow_call_s),
        )
    return MemoryKV(settings.memory_kv_max_entries)
