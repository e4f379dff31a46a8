"""Revoked access tokens and login sessions, honoured by every ingress replica.

The database is the truth: a logout or a refresh-token reuse is committed to
``revoked_tokens`` before it is answered, and one that cannot be committed is
refused (``RevocationNotRecorded``, a 503), never acknowledged and lost. Then
the revocation goes to the key-value store, the fast path that other replicas
see at once when it is Redis, and to this replica's own memory.

Every replica also re-reads the unexpired revocations from the database at most
every ``sync_s`` seconds (one small query per replica, not per request): so a
revocation holds on a replica that restarted, on one that does not share the
key-value store (the embedded default) and while Redis is down, at the latest
``sync_s`` after it was made. Revocations never end early, so reads only add.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import Database, unavailable
from storage.kv import KV
from storage.repositories import revocations as repo

Kind = Literal["jti", "family"]
PRUNE_EVERY_S = 60.0
RETRY_AFTER_S = 5
log = logging.getLogger(__name__)


class RevocationNotRecorded(Exception):
    """The database did not take the revocation; the caller should try again."""


def kv_key(kind: Kind, token_id: str) -> str:
    return f"auth:revoked_{kind}:{token_id}"


class Revocations:
    """One per ingress replica (inside ``auth.service.AuthService``)."""

    def __init__(self, kv: KV, db: Database | None = None, sync_s: float = 1.0, clock=time.monotonic) -> None:
        self.kv, self.db, self.sync_s, self.clock = kv, db, sync_s, clock
        self._known: dict[tuple[str, str], datetime] = {}  # (kind, token_id) -> expires_at
        self._synced_at: float | None = None
        self._pruned_at: float | None = None
        self._sync_lock = asyncio.Lock()
        self._sync_failing = False

    async def revoke(self, session: AsyncSession, entries: dict[tuple[Kind, str], datetime]) -> None:
        """Commit ``session`` with the revocations (and whatever else it holds, such as
        the refresh tokens revoked with them), then publish them; RevocationNotRecorded
        when the database refuses."""
        rows = [(kind, token_id, expires_at) for (kind, token_id), expires_at in entries.items()]
        try:
            await repo.add_revocations(session, rows)
            await session.commit()
        except Exception as error:
            await rollback_quietly(session)
            if not unavailable(error):
                raise  # an error of the statement, not an outage: retrying would not help
            log.warning("revocation not recorded: %s", error)
            raise RevocationNotRecorded(str(error)) from error
        now = datetime.now(UTC)
        for kind, token_id, expires_at in rows:
            self._known[(kind, token_id)] = expires_at
            remaining_s = (expires_at - now).total_seconds()
            if remaining_s > 0:
                await self.kv.set(kv_key(kind, token_id), "1", ttl_s=remaining_s)

    async def revoked(self, jti: str, family_id: str | None) -> Kind | None:
        """Which of the token or its session is revoked, if either."""
        keys: list[tuple[Kind, str]] = [("jti", jti)] + ([("family", family_id)] if family_id else [])
        await self._sync_if_stale()
        now = datetime.now(UTC)
        for kind, token_id in keys:
            expires_at = self._known.get((kind, token_id))
            if expires_at is not None and expires_at > now:
                return kind
        for kind, token_id in keys:
            if await self.kv.get(kv_key(kind, token_id)):
                return kind
        return None

    async def _sync_if_stale(self) -> None:
        if self.db is None or not self._stale():
            return
        async with self._sync_lock:
            if self._stale():  # another request may have synced while this one waited
                await self.sync()

    def _stale(self) -> bool:
        return self._synced_at is None or self.clock() - self._synced_at >= self.sync_s

    async def sync(self) -> None:
        """Read the unexpired revocations from the database; now and then prune expired ones.

        While the database is down the replica keeps what it knows and tries again
        after ``sync_s`` (logged once per outage)."""
        self._synced_at = self.clock()
        now = datetime.now(UTC)
        try:
            async with self.db.sessionmaker() as session:
                rows = await repo.unexpired(session, now)
                if self._pruned_at is None or self.clock() - self._pruned_at >= PRUNE_EVERY_S:
                    await repo.prune(session, now - timedelta(seconds=1))
                    await session.commit()
                    self._pruned_at = self.clock()
        except Exception as error:
            if not unavailable(error):
                raise
            if not self._sync_failing:
                log.warning("cannot read revocations from the database, using the ones known: %s", error)
            self._sync_failing = True
            return
        self._sync_failing = False
        self._known = {key: exp for key, exp in self._known.items() if exp > now}
        self._known.update({(kind, token_id): expires_at for kind, token_id, expires_at in rows})


async def rollback_quietly(session: AsyncSession) -> None:
    try:
        await session.rollback()
    except Exception as error:
        if not unavailable(error):
            raise  # the connection is gone; the session is discarded with the request
