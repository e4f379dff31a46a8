"""Login, refresh-token rotation and logout.

Sessions: a login starts a token *family*; each refresh uses up one refresh
token and issues the next one of the same family. Presenting a used refresh
token means it was copied, so the whole family is revoked (its refresh tokens
in their table, its access tokens in ``revoked_tokens`` until they expire, see
``auth.revocations``).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from auth.passwords import verify_password_async
from auth.revocations import RETRY_AFTER_S, RevocationNotRecorded, Revocations, rollback_quietly
from auth.tokens import LEEWAY_S, TokenClaims, TokenCodec, TokenError
from configs.settings import Settings
from storage.db import Database, unavailable
from storage.kv import KV, FallbackCounter
from storage.repositories import refresh_tokens as refresh_repo
from storage.repositories import users as users_repo
from storage.tables import User
from storage.telemetry import CounterLike, make_counter


class AuthError(Exception):
    """Authentication failed; carries the HTTP status, message and headers to answer with."""

    def __init__(self, detail: str, *, status_code: int = 401, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code
        self.headers = headers or {}


class LoginThrottled(AuthError):
    def __init__(self, retry_after_s: int, what: str = "failed logins for this username") -> None:
        super().__init__(
            f"too many {what}; try again in {retry_after_s} s",
            status_code=429,
            headers={"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


class RevocationUnavailable(AuthError):
    """A logout or session revocation the database did not take: 503, try again."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} could not be recorded (the database is unavailable); nothing was revoked, try again",
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class AuthService:
    """One per process; raises ValueError at construction when the JWT secret is unfit.

    ``db`` lets this replica read revocations made elsewhere (``auth.revocations``);
    without it only the key-value store and this replica's own revocations are seen.

    Login throttling counts *before* it decides, per username and per client
    address, with one atomic increment (Redis ``INCR`` or the in-process counter),
    so a burst of concurrent guesses cannot all pass a check that a slow password
    verification has not yet updated. A successful login forgives the tries counted
    up to its own, not those counted after it: the right password inside a burst of
    guesses does not reopen the window for the rest of the burst. While Redis is
    down the shared counter counts nothing, so the throttle counts in this replica
    instead: weaker (per replica), never off.
    """

    def __init__(
        self,
        kv: KV,
        settings: Settings,
        *,
        db: Database | None = None,
        failure_counter: CounterLike | None = None,
    ) -> None:
        self.kv = kv
        self.settings = settings
        self.codec = TokenCodec.from_settings(settings)
        self.revocations = Revocations(kv, db, sync_s=settings.revocation_sync_s)
        self._counts = FallbackCounter(kv, settings.memory_kv_max_entries)  # local while Redis is down
        self.login_failures = failure_counter or make_counter(
            "hdx_login_failures", "Failed login attempts, by reason.", ("reason",)
        )

    # --- login -----------------------------------------------------------------
    async def login(self, session: AsyncSession, username: str, password: str, client: str | None = None) -> TokenPair:
        """``client`` is the caller's address, limited to ``login_client_max_attempts`` tries
        (right or wrong) per window: each try costs a password hash of CPU."""
        s = self.settings
        if client:
            attempts, retry_after, _ = await self._count(f"auth:login_client:{client}", s.login_client_window_s)
            if attempts > s.login_client_max_attempts:
                self.login_failures.inc(tags={"reason": "throttled"})
                raise LoginThrottled(retry_after, "login attempts from this address")
        throttle_key = f"auth:login_failures:{username.lower()}"
        failures, retry_after, counted_in = await self._count(throttle_key, s.login_failure_window_s)
        if failures > s.login_max_failures:  # this try included: the right password is refused too
            self.login_failures.inc(tags={"reason": "throttled"})
            raise LoginThrottled(retry_after)

        user = await users_repo.get_user_by_username(session, username)
        matches, new_hash = await verify_password_async(user.password_hash if user else None, password)
        if user is None or not matches:
            self.login_failures.inc(tags={"reason": "bad_credentials"})
            raise AuthError("incorrect username or password")
        if not user.is_active:
            self.login_failures.inc(tags={"reason": "inactive"})
            raise AuthError("this account is disabled")

        await counted_in.decr(throttle_key, failures)
        if new_hash:
            await users_repo.set_password_hash(session, user, new_hash)
        pair = await self._issue_pair(session, user, family_id=secrets.token_urlsafe(16))
        await session.commit()
        return pair

    async def _count(self, key: str, window_s: int) -> tuple[int, int, KV]:
        """One more try under ``key``: ``(tries in this window, seconds until it ends, the store that counted)``."""
        count, store = await self._counts.incr(key, ttl_s=window_s)
        remaining = await store.ttl(key) or window_s
        return count, max(1, math.ceil(remaining)), store

    # --- refresh ---------------------------------------------------------------
    async def refresh(self, session: AsyncSession, refresh_token: str) -> TokenPair:
        try:
            claims = self.codec.decode(refresh_token, expected_type="refresh")
        except TokenError as error:
            raise AuthError(f"refresh {error}") from error
        stored = await refresh_repo.get_refresh_token(session, claims.jti)
        if stored is None or stored.user_id != claims.user_id:
            raise AuthError("refresh token is unknown")
        if stored.revoked_at is not None:
            raise AuthError("refresh token has been revoked; log in again")
        if not await refresh_repo.mark_used(session, claims.jti):
            await self.revoke_family(session, stored.family_id)
            raise AuthError("refresh token was already used; this session has been revoked, log in again")

        user = await users_repo.get_user(session, claims.user_id)
        if user is None or not user.is_active:
            await session.commit()
            raise AuthError("this account is disabled")
        pair = await self._issue_pair(session, user, family_id=stored.family_id)
        await session.commit()
        return pair

    # --- access tokens and logout -------------------------------------------------
    async def verify_access_token(self, token: str) -> TokenClaims:
        """Decoded claims of a valid, unrevoked access token; TokenError otherwise."""
        claims = self.codec.decode(token, expected_type="access")
        revoked = await self.revocations.revoked(claims.jti, claims.family_id)
        if revoked == "jti":
            raise TokenError("token has been revoked")
        if revoked == "family":
            raise TokenError("token has been revoked (its session was logged out)")
        return claims

    async def logout(self, session: AsyncSession, access: TokenClaims, refresh_token: str | None = None) -> None:
        """Revoke the access token and its session; a refresh token of the same user
        from another session is revoked too. Refresh tokens that are invalid anyway,
        or belong to someone else, are ignored. RevocationUnavailable (503) when the
        database cannot record it: then nothing is revoked."""
        entries: dict[tuple[str, str], datetime] = {("jti", access.jti): _with_leeway(access.expires_at)}
        families = {access.family_id} if access.family_id else set()
        if refresh_token:
            try:
                other = self.codec.decode(refresh_token, expected_type="refresh")
            except TokenError:
                other = None
            if other is not None and other.user_id == access.user_id and other.family_id:
                families.add(other.family_id)
        await self._record(session, entries, families, "the logout")

    async def revoke_family(self, session: AsyncSession, family_id: str) -> None:
        """End a login session, committed: its refresh tokens now, its access tokens until
        they expire. RevocationUnavailable (503) when the database cannot record it."""
        await self._record(session, {}, {family_id}, "the session revocation")

    async def _record(self, session: AsyncSession, entries: dict, families: set[str], what: str) -> None:
        # A session's access tokens are all gone by this time; its refresh tokens are revoked in their table.
        family_expiry = _with_leeway(datetime.now(UTC) + timedelta(seconds=self.settings.access_token_ttl_s))
        try:
            for family_id in families:
                await refresh_repo.revoke_family(session, family_id)
                entries[("family", family_id)] = family_expiry
            await self.revocations.revoke(session, entries)
        except RevocationNotRecorded as error:
            raise RevocationUnavailable(what) from error
        except Exception as error:  # staging failed before the commit was even tried
            await rollback_quietly(session)
            if not unavailable(error):
                raise
            raise RevocationUnavailable(what) from error

    async def _issue_pair(self, session: AsyncSession, user: User, *, family_id: str) -> TokenPair:
        access = self.codec.issue(user_id=user.id, role=user.role, type="access", family_id=family_id)
        refresh = self.codec.issue(user_id=user.id, role=user.role, type="refresh", family_id=family_id)
        await refresh_repo.add_refresh_token(
            session, jti=refresh.jti, family_id=family_id, user_id=user.id, expires_at=refresh.expires_at
        )
        return TokenPair(access.token, refresh.token, expires_in=self.codec.access_ttl_s)


def _with_leeway(expires_at: datetime) -> datetime:
    # Tokens are accepted up to LEEWAY_S past their expiry, so their revocation lasts as long.
    return expires_at + timedelta(seconds=LEEWAY_S)
