"""Tiers, rate limits and quotas: 429 with headers, reset after the window; /users/me and usage."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from auth.rate_limits import RateLimiter, Tier, load_tiers
from storage.kv import FailSoftKV, RedisKV
from tests.test_platform_support import platform  # noqa: F401


def test_per_window_limit_429_with_headers_then_reset(platform):
    user = platform.user("engineer", tier="tiny")  # 3 calls per 2 s window
    c = platform.client
    # Start at the beginning of a window so the 3 allowed calls cannot straddle two windows.
    time.sleep(2 - time.time() % 2 + 0.05)
    seen = [c.get("/api/v1/users/me", headers=user["headers"]) for _ in range(4)]
    assert [r.status_code for r in seen] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in seen] == ["2", "1", "0", "0"]
    assert all(r.headers["X-RateLimit-Limit"] == "3" for r in seen)
    refused = seen[-1]
    assert 1 <= int(refused.headers["Retry-After"]) <= 2 and refused.headers["X-RateLimit-Reset"]
    assert "rate limit of 3 calls per 2 s exceeded for tier 'tiny'" in refused.json()["detail"]
    time.sleep(int(refused.headers["Retry-After"]) + 0.1)
    assert c.get("/api/v1/users/me", headers=user["headers"]).status_code == 200
    # Another caller has its own counter.
    other = platform.user("engineer", tier="tiny")
    assert c.get("/api/v1/systems", headers=other["headers"]).status_code == 200


def test_daily_quota_429_and_usage(platform):
    user = platform.user("engineer", tier="stingy")  # 4 calls per day
    c = platform.client
    me = c.get("/api/v1/users/me", headers=user["headers"]).json()
    assert me["tier"] == "stingy" and me["limits"]["daily_quota"] == 4 and me["username"] == user["username"]
    c.get("/api/v1/systems", headers=user["headers"])
    c.get("/api/v1/systems", headers=user["headers"])
    platform.flush_audit()
    usage = c.get("/api/v1/users/me/usage", headers=user["headers"])
    assert usage.status_code == 200
    out = usage.json()
    assert out["used_today"] == 4 and out["quota_left"] == 0
    [(day, calls)] = out["calls"].items()
    assert calls == {"GET /api/v1/users/me": 1, "GET /api/v1/systems": 2}
    r = c.get("/api/v1/systems", headers=user["headers"])
    assert r.status_code == 429 and "daily quota of 4 calls" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) > 0 and r.headers["X-RateLimit-Limit"] == "100"


def test_unknown_tier_is_served_as_free(platform):
    user = platform.user("engineer", tier="platinum")
    me = platform.client.get("/api/v1/users/me", headers=user["headers"]).json()
    assert me["tier"] == "free" and me["limits"]["per_minute"] == 1000


def test_tiers_file_is_checked(tmp_path: Path):
    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers:\n  pro: {per_minute: 10, daily_quota: 100}\n")
    with pytest.raises(ValueError, match="'free' tier must be defined"):
        load_tiers(bad)
    bad.write_text("tiers:\n  free: {per_minute: ten, daily_quota: 100}\n")
    with pytest.raises(ValueError, match="tier 'free' needs integer"):
        load_tiers(bad)
    shipped = load_tiers(Path(__file__).resolve().parents[1] / "configs" / "tiers.yaml")
    assert set(shipped) == {"free", "pro", "enterprise"}
    assert shipped["free"].per_minute < shipped["pro"].per_minute < shipped["enterprise"].per_minute


async def test_limits_are_shared_through_the_kv_store(kv):
    # Two limiters on one store stand for two ingress replicas: together they allow the limit once.
    tiers = {"free": Tier("free", per_minute=5, daily_quota=100)}
    a, b = RateLimiter(kv, tiers), RateLimiter(kv, tiers)
    now = 1_000_000_020.0
    allowed = [(await (a if i % 2 else b).check("user:1", "free", now=now)).allowed for i in range(8)]
    assert allowed == [True] * 5 + [False] * 3
    assert (await a.check("user:1", "free", now=now + 60)).allowed  # the next window


async def test_during_a_redis_outage_limits_are_counted_in_the_replica():
    """Redis unreachable: calls are not refused for it, and the limit still holds, counted locally."""
    limiter = RateLimiter(
        FailSoftKV(RedisKV("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)),
        {"free": Tier("free", per_minute=2, daily_quota=100)},
    )
    decisions = [await limiter.check("user:1", "free") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, False, False]
    assert decisions[2].reason == "rate_limit"
    assert (await limiter.check("user:2", "free")).allowed  # per caller, as with Redis


def test_usage_is_counted_per_utc_day_and_endpoint_by_the_database(platform):
    from datetime import UTC, datetime, timedelta

    from storage.repositories import audit as audit_repo

    user = platform.user("engineer")
    today = datetime.now(UTC).replace(hour=0, minute=30, second=0, microsecond=0)

    def call(at: datetime, route: str, api_key_id: int | None = None) -> dict:
        return {
            "created_at": at,
            "user_id": user["id"],
            "username": user["username"],
            "api_key_id": api_key_id,
            "method": "GET",
            "route": route,
            "path": route,
            "status": 200,
            "outcome": "ok",
            "latency_ms": 1.0,
            "system_id": None,
            "trace_id": "t",
            "client": None,
        }

    yesterday_late = today - timedelta(hours=1)  # 23:30 UTC the day before
    seeded = [call(today, "/a")] * 3 + [call(yesterday_late, "/a"), call(yesterday_late, "/b", api_key_id=7)]
    seeded += [call(today - timedelta(days=5), "/old")]  # outside days=2

    async def seed(session):
        await audit_repo.add_many(session, seeded)
        await session.commit()

    platform.run(seed)
    out = platform.client.get("/api/v1/users/me/usage", params={"days": 2}, headers=user["headers"]).json()
    assert out["calls"] == {
        today.date().isoformat(): {"GET /a": 3},
        yesterday_late.date().isoformat(): {"GET /a": 1, "GET /b": 1},
    }
    assert list(out["calls"]) == sorted(out["calls"], reverse=True)  # newest day first
