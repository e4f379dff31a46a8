from __future__ import annotations

import asyncio
import uuid

import pytest

from configs.settings import Settings
from storage.kv import KV, FailSoftKV, MemoryKV, RedisKV, make_kv
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
