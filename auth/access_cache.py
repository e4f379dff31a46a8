"""A short memory, per ingress replica, of who a caller is and what they may reach.

Every API call needs the caller's user row (role, tier, still active?) or API
key row, and a system route needs the permission verdict. Reading them from the
database on every call costs more than answering a cached diagnosis, so
``AccessCache`` keeps the *positive* answers for ``access_cache_ttl_s`` seconds:

* an unknown, disabled or refused caller is looked up again on every call, so a
  new user, key or grant works at once;
* a revoked grant or key, a deleted system or a disabled user stops working
  within the TTL; at once when the change goes through this replica's API, which
  calls ``clear``;
* a token's signature, expiry and revocation (logout) are checked on every call,
  whatever is cached.

A TTL of 0 turns the cache off.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache


@dataclass(frozen=True)
class CachedUser:
    """What a request needs of a user row."""

    id: int
    username: str
    role: str
    tier: str


class AccessCache:
    KINDS = ("user", "api_key", "grant")

    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self._caches: dict[str, TTLCache] = (
            {kind: TTLCache(max_entries, ttl_s) for kind in self.KINDS} if ttl_s > 0 else {}
        )

    def get(self, kind: str, key: Hashable) -> Any | None:
        cache = self._caches.get(kind)
        return None if cache is None else cache.get(key)

    def put(self, kind: str, key: Hashable, value: Any) -> Any:
        cache = self._caches.get(kind)
        if cache is not None:
            cache[key] = value
        return value

    def clear(self) -> None:
        for cache in self._caches.values():
            cache.clear()
