from __future__ import annotations

import asyncio
import uuid

import pytest

from configs.settings import Settings
from storage.kv import KV, CircuitBreaker, FailSoftKV, MemoryKV, RedisKV, make_kv
from tests.fixtures.db import REDIS_URL

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_set_get_delete(kv: KV) -> None:
    assert await kv.get("k") is None
    await kv.set("k", "v1")
    assert await kv.get("k") == "v1"
    await kv.set("k", "v2")
    assert await kv.get("k") == "v2"
    assert await kv.ttl("k") is None  # no expiry asked for
    await kv.delete("k")
    assert await kv.get("k") is None
    await kv.delete("k")  # deleting a missing key is fine


async def test_values_expire_after_their_ttl(kv: KV) -> None:
    await kv.set("short", "x", ttl_s=0.2)
    await kv.set("long", "y", ttl_s=30)
    assert 0 < await kv.ttl("short") <= 0.2
    await asyncio.sleep(0.35)
    assert await kv.get("short") is None
    assert await kv.ttl("short") is None
    assert await kv.get("long") == "y"
    assert 25 < await kv.ttl("long") <= 30


async def test_incr_counts_within_a_fixed_window(kv: KV) -> None:
    assert [await kv.incr("n", ttl_s=0.3) for _ in range(3)] == [1, 2, 3]
    # Later increments do not extend the window: it still ends 0.3 s after the first.
    await asyncio.sleep(0.2)
    assert await kv.incr("n", ttl_s=0.3) == 4
    assert await kv.ttl("n") <= 0.15
    await asyncio.sleep(0.2)
    assert await kv.get("n") is None
    assert await kv.incr("n", ttl_s=0.3) == 1


async def test_incr_without_ttl_and_after_set(kv: KV) -> None:
    assert await kv.incr("plain") == 1
    assert await kv.incr("plain") == 2
    assert await kv.ttl("plain") is None
    await kv.set("preset", "10")
    assert await kv.incr("preset", ttl_s=5) == 11
    assert await kv.ttl("preset") is not None  # a key without expiry gets the window


async def test_decr_keeps_the_window_and_deletes_at_zero(kv: KV) -> None:
    for _ in range(5):
        await kv.incr("d", ttl_s=30)
    assert await kv.decr("d", 2) == 3
    assert 25 < await kv.ttl("d") <= 30  # still the first increment's window
    assert await kv.decr("d", 7) == 0
    assert await kv.get("d") is None and await kv.ttl("d") is None  # gone, not -4 for ever
    assert await kv.decr("never-counted") == 0 and await kv.get("never-counted") is None


async def test_ttl_must_be_positive(kv: KV) -> None:
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        await kv.set("k", "v", ttl_s=0)


async def test_ping(kv: KV) -> None:
    assert await kv.ping() is True


@pytest.mark.redis
async def test_redis_prefixes_isolate_stores_and_clear_only_their_own() -> None:
    run = uuid.uuid4().hex
    first, second = RedisKV(REDIS_URL, prefix=f"hdx-test:{run}:a:"), RedisKV(REDIS_URL, prefix=f"hdx-test:{run}:b:")
    try:
        if not await first.ping():
            pytest.skip("Redis not reachable")
        await first.set("k", "1")
        await second.set("k", "2")
        assert (await first.get("k"), await second.get("k")) == ("1", "2")
        await first.clear()
        assert (await first.get("k"), await second.get("k")) == (None, "2")
    finally:
        await second.clear()
        await first.close()
        await second.close()


async def test_redis_ping_is_false_when_unreachable() -> None:
    store = RedisKV("redis://127.0.0.1:1/0")
    assert await store.ping() is False
    await store.close()


async def test_make_kv_picks_redis_only_when_configured(tmp_path) -> None:
    assert isinstance(make_kv(Settings(home=tmp_path, redis_url=None)), MemoryKV)
    store = make_kv(Settings(home=tmp_path, redis_url=REDIS_URL))
    assert isinstance(store, FailSoftKV) and isinstance(store.inner, RedisKV) and store.inner.prefix == "hdx:"
    await store.close()


# --- the in-process store's bounds ------------------------------------------------------------
async def test_memory_kv_evicts_expired_entries() -> None:
    store = MemoryKV()
    for i in range(1000):  # e.g. a login window per unknown username
        await store.incr(f"auth:login_failures:nobody-{i}", ttl_s=0.05)
    await store.set("revoked", "1")  # no TTL: stays
    assert len(store) == 1001
    await asyncio.sleep(0.1)
    await store.set("next", "x", ttl_s=30)  # any write sweeps what has expired
    assert len(store) == 2
    assert await store.get("revoked") == "1" and await store.get("auth:login_failures:nobody-1") is None


async def test_memory_kv_caps_its_entries_dropping_the_least_recently_used() -> None:
    store = MemoryKV(max_entries=10)
    for i in range(25):
        await store.set(f"k{i}", str(i), ttl_s=60)
        if i >= 1:
            await store.get("k0")  # kept in use
    assert len(store) == 10
    assert await store.get("k0") == "0" and await store.get("k24") == "24"
    assert await store.get("k1") is None


async def test_make_kv_sizes_the_memory_store_from_settings(tmp_path) -> None:
    store = make_kv(Settings(home=tmp_path, redis_url=None, memory_kv_max_entries=7))
    assert isinstance(store, MemoryKV) and store._data.maxsize == 7


# --- the circuit breaker in front of Redis -------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_opens_on_failure_or_slowness_and_probes_after_the_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(cooldown_s=5, slow_call_s=0.25, clock=clock)
    assert breaker.allow() and breaker.state == "closed"
    breaker.record(0.01, "ConnectionError: refused")
    assert breaker.state == "open" and not breaker.allow() and breaker.rejected_calls == 1
    clock.now += 5
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # one probe at a time
    breaker.record(0.01, "ConnectionError: refused")  # the probe failed: a new cool-down
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.record(0.01)
    assert breaker.state == "closed" and breaker.allow()
    breaker.record(0.4)  # answered, but slowly: one slow call may be this process's busy loop
    breaker.record(0.4)
    assert breaker.state == "closed"
    breaker.record(0.01)  # a quick one ends the streak
    for _ in range(3):
        breaker.record(0.4)
    assert breaker.state == "open" and breaker.last_error.startswith("3 slow calls in a row")
    clock.now += 5
    assert breaker.allow()
    breaker.record(0.4)  # a slow probe is not good enough
    assert breaker.state == "open"


async def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    """A probe cancelled mid-call (a client gone, a timeout) must not keep the breaker half-open for ever."""

    class Hanging:
        async def get(self, key):
            await asyncio.sleep(3600)

    clock = Clock()
    store = FailSoftKV(Hanging(), CircuitBreaker(cooldown_s=5, clock=clock))
    store.breaker.record(0.01, "ConnectionError: refused")
    clock.now += 5
    probe = asyncio.create_task(store.get("k"))
    await asyncio.sleep(0)
    assert store.breaker.state == "half_open" and not store.breaker.allow()  # the probe is out
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert store.breaker.allow()  # the next call may probe


@pytest.mark.redis
async def test_fail_soft_kv_cuts_a_stopped_redis_off_and_comes_back() -> None:
    from tests.fixtures.private_servers import PrivateRedis

    redis_server, clock = PrivateRedis(), Clock()
    redis_server.start()
    store = FailSoftKV(RedisKV(redis_server.url, socket_timeout=0.3), CircuitBreaker(cooldown_s=5, clock=clock))
    try:
        await store.set("k", "v")
        assert store.healthy and await store.get("k") == "v"
        redis_server.stop()
        assert await store.get("k") is None and store.state == "open" and not store.healthy
        assert await store.incr("n", ttl_s=5) == 0  # "not counted"
        assert await store.ping() is False
        assert store.breaker.rejected_calls == 2  # cut off: Redis was not even tried
        redis_server.start()
        assert await store.get("k") is None  # still cooling down
        clock.now += 5
        assert await store.ping() is True and store.state == "closed"  # the probe
        assert await store.incr("n", ttl_s=5) == 1
    finally:
        redis_server.stop()
        await store.close()


@pytest.mark.redis
async def test_fail_soft_kv_cuts_a_blackholed_redis_off_after_one_timeout() -> None:
    import signal

    from tests.fixtures.private_servers import PrivateRedis

    redis_server = PrivateRedis()
    redis_server.start()
    store = FailSoftKV(RedisKV(redis_server.url, socket_timeout=0.2), CircuitBreaker(cooldown_s=60))
    try:
        assert await store.ping()
        redis_server.proc.send_signal(signal.SIGSTOP)  # accepts bytes, never answers
        assert await store.get("k") is None and store.state == "open"
        assert "Timeout" in store.breaker.last_error
        for _ in range(20):
            assert await store.get("k") is None
        assert store.breaker.rejected_calls == 20  # none of them waited for the socket timeout
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
        redis_server.stop()
        await store.close()
