"""Per-caller rate limits and daily quotas from ``configs/tiers.yaml``.

The counters live in the key-value store (``storage.kv``): Redis in production,
shared by every ingress replica; in-process otherwise. They are fixed windows
(``incr`` with a TTL set on the first hit), keyed by the window's number so
every replica agrees on when a window ends. While Redis is down each replica counts
in its own memory (``storage.kv.FallbackCounter``): the limits hold per replica, and
an outage neither refuses service nor switches the limits off.

``RateLimiter.check`` decides; the HTTP side (the 429, the ``X-RateLimit-*``
headers) is ``api.deps.enforce_rate_limit`` and ``api.deps.rate_limit_headers``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from auth.principal import Principal
from storage.kv import FallbackCounter

DEFAULT_TIER = "free"
DAY_S = 86_400


@dataclass(frozen=True)
class Tier:
    name: str
    per_minute: int
    daily_quota: int
    window_s: int = 60


def load_tiers(path: Path) -> dict[str, Tier]:
    """Tiers by name; a malformed file stops the service at start with the reason."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    tiers = {}
    for name, spec in (raw.get("tiers") or {}).items():
        try:
            tiers[name] = Tier(
                name=name,
                per_minute=int(spec["per_minute"]),
                daily_quota=int(spec["daily_quota"]),
                window_s=int(spec.get("window_s", 60)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: tier {name!r} needs integer per_minute and daily_quota ({exc})") from None
        if min(tiers[name].per_minute, tiers[name].daily_quota, tiers[name].window_s) <= 0:
            raise ValueError(f"{path}: tier {name!r} has a non-positive limit")
    if DEFAULT_TIER not in tiers:
        raise ValueError(f"{path}: the {DEFAULT_TIER!r} tier must be defined (it serves unknown tiers)")
    return tiers


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the per-minute window resets
    reason: str | None = None  # "rate_limit" | "daily_quota" when refused
    retry_after_s: int = 0


def subject(principal: Principal) -> str:
    """Limits apply per API key when one is used, else per user."""
    return f"key:{principal.api_key_id}" if principal.api_key_id is not None else f"user:{principal.user_id}"


class RateLimiter:
    """Counts calls per subject against its tier; one per ingress replica, sharing the store."""

    def __init__(self, kv, tiers: dict[str, Tier], max_local_entries: int = 100_000) -> None:
        self.kv = kv
        self.tiers = tiers
        self._counts = FallbackCounter(kv, max_local_entries)

    def tier(self, name: str) -> Tier:
        return self.tiers.get(name) or self.tiers[DEFAULT_TIER]

    @staticmethod
    def _day(now: float) -> tuple[str, int]:
        """The UTC day's key and the seconds left in it."""
        return time.strftime("%Y-%m-%d", time.gmtime(now)), DAY_S - int(now) % DAY_S

    async def check(self, who: str, tier_name: str, now: float | None = None) -> Decision:
        """Count one call for ``who`` and say whether it may go ahead."""
        now = time.time() if now is None else now
        tier = self.tier(tier_name)
        window = int(now // tier.window_s)
        reset_s = max(math.ceil((window + 1) * tier.window_s - now), 1)
        used, _ = await self._counts.incr(f"rl:{who}:{tier.window_s}:{window}", ttl_s=tier.window_s + 1)
        if used > tier.per_minute:
            return Decision(False, tier.per_minute, 0, reset_s, "rate_limit", reset_s)
        day, day_left_s = self._day(now)
        used_today, _ = await self._counts.incr(f"quota:{who}:{day}", ttl_s=day_left_s + 60)
        if used_today > tier.daily_quota:
            return Decision(False, tier.per_minute, max(tier.per_minute - used, 0), reset_s, "daily_quota", day_left_s)
        return Decision(True, tier.per_minute, max(tier.per_minute - used, 0), reset_s)

    async def quota(self, who: str, tier_name: str, now: float | None = None) -> dict:
        """Today's quota use, without counting a call."""
        now = time.time() if now is None else now
        tier = self.tier(tier_name)
        day, day_left_s = self._day(now)
        used = int(await self.kv.get(f"quota:{who}:{day}") or 0)
        return {
            "tier": tier.name,
            "per_minute": tier.per_minute,
            "daily_quota": tier.daily_quota,
            "used_today": used,
            "quota_left": max(tier.daily_quota - used, 0),
            "quota_resets_in_s": day_left_s,
        }
