"""Login, refresh-token rotation and logout.

Sessions: a login starts a token *family*; each refresh uses up one refresh
token and issues the next one of the same family. Presenting a used refresh
token means it was copied, so the whole family is revoked (its refresh tokens
in the database, its access tokens in the key-value store until they expire).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from auth.passwords import verify_password
from auth.tokens import LEEWAY_S, TokenClaims, TokenCodec, TokenError
from configs.settings import Settings
from storage.kv import KV
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
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"too many failed logins for this username; try again in {retry_after_s} s",
            status_code=429,
            headers={"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class AuthService:
    """One per process; raises ValueError at construction when the JWT secret is unfit."""

    def __init__(self, kv: KV, settings: Settings, *, failure_counter: CounterLike | None = None) -> None:
        self.kv = kv
        self.settings = settings
        self.codec = TokenCodec.from_settings(settings)
        self.login_failures = failure_counter or make_counter(
            "hdx_login_failures", "Failed login attempts, by reason.", ("reason",)
        )

    # --- login -----------------------------------------------------------------
    async def login(self, session: AsyncSession, username: str, password: str) -> TokenPair:
        throttle_key = f"auth:login_failures:{username.lower()}"
        failures = int(await self.kv.get(throttle_key) or 0)
        if failures >= self.settings.login_max_failures:
            self.login_failures.inc(tags={"reason": "throttled"})
            retry_after = await self.kv.ttl(throttle_key) or self.settings.login_failure_window_s
            raise LoginThrottled(max(1, math.ceil(retry_after)))

        user = await users_repo.get_user_by_username(session, username)
        matches, new_hash = verify_password(user.password_hash if user else None, password)
        if user is None or not matches:
            await self.kv.incr(throttle_key, ttl_s=self.settings.login_failure_window_s)
            self.login_failures.inc(tags={"reason": "bad_credentials"})
            raise AuthError("incorrect username or password")
        if not user.is_active:
            self.login_failures.inc(tags={"reason": "inactive"})
            raise AuthError("this account is disabled")

        await self.kv.delete(throttle_key)
        if new_hash:
            await users_repo.set_password_hash(session, user, new_hash)
        pair = await self._issue_pair(session, user, family_id=secrets.token_urlsafe(16))
        await session.commit()
        return pair

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
            await session.commit()
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
        if await self.kv.get(_revoked_token_key(claims.jti)):
            raise TokenError("token has been revoked")
        if claims.family_id and await self.kv.get(_revoked_family_key(claims.family_id)):
            raise TokenError("token has been revoked (its session was logged out)")
        return claims

    async def logout(self, session: AsyncSession, access: TokenClaims, refresh_token: str | None = None) -> None:
        """Revoke the access token and its session; a refresh token of the same user
        from another session is revoked too. Refresh tokens that are invalid anyway,
        or belong to someone else, are ignored."""
        remaining_s = (access.expires_at - datetime.now(UTC)).total_seconds() + LEEWAY_S
        if remaining_s > 0:
            await self.kv.set(_revoked_token_key(access.jti), "1", ttl_s=remaining_s)
        families = {access.family_id} if access.family_id else set()
        if refresh_token:
            try:
                other = self.codec.decode(refresh_token, expected_type="refresh")
            except TokenError:
                other = None
            if other is not None and other.user_id == access.user_id and other.family_id:
                families.add(other.family_id)
        for family_id in families:
            await self.revoke_family(session, family_id)
        await session.commit()

    async def revoke_family(self, session: AsyncSession, family_id: str) -> None:
        """End a login session: its refresh tokens now, its access tokens until they expire."""
        await refresh_repo.revoke_family(session, family_id)
        await self.kv.set(_revoked_family_key(family_id), "1", ttl_s=self.settings.access_token_ttl_s + LEEWAY_S)

    async def _issue_pair(self, session: AsyncSession, user: User, *, family_id: str) -> TokenPair:
        access = self.codec.issue(user_id=user.id, role=user.role, type="access", family_id=family_id)
        refresh = self.codec.issue(user_id=user.id, role=user.role, type="refresh", family_id=family_id)
        await refresh_repo.add_refresh_token(
            session, jti=refresh.jti, family_id=family_id, user_id=user.id, expires_at=refresh.expires_at
        )
        return TokenPair(access.token, refresh.token, expires_in=self.codec.access_ttl_s)


def _revoked_token_key(jti: str) -> str:
    return f"auth:revoked_jti:{jti}"


def _revoked_family_key(family_id: str) -> str:
    return f"auth:revoked_family:{family_id}"
