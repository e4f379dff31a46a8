"""API keys for machines: ``hdx_<prefix>_<secret>``.

The prefix (public, unique) finds the row; the secret is checked against the
stored SHA-256 digest in constant time. The plaintext is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from storage.repositories import api_keys as repo
from storage.repositories import users as users_repo
from storage.tables import ApiKey, User, utcnow

SCHEME = "hdx"
PREFIX_BYTES = 6  # 12 hex chars: enough that random prefixes practically never collide
SECRET_BYTES = 32  # 256 bits
LAST_USED_RESOLUTION = timedelta(minutes=1)  # avoid a database write on every request


class ApiKeyError(Exception):
    """An API key was refused; ``str(error)`` says why, fit for a 401 message."""


@dataclass(frozen=True)
class GeneratedKey:
    plaintext: str
    prefix: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_api_key() -> GeneratedKey:
    prefix = secrets.token_hex(PREFIX_BYTES)
    plaintext = f"{SCHEME}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return GeneratedKey(plaintext=plaintext, prefix=prefix, key_hash=hash_key(plaintext))


def parse_prefix(plaintext: str) -> str:
    """The lookup prefix of a well-formed key; ApiKeyError otherwise."""
    scheme, _, rest = plaintext.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != SCHEME or len(prefix) != 2 * PREFIX_BYTES or not secret:
        raise ApiKeyError("API key is malformed; expected hdx_<prefix>_<secret>")
    return prefix


async def create_api_key(
    session: AsyncSession, *, owner: User, name: str, system_ids: list[str], tier: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key for ``owner``; returns the row and the plaintext (never stored).

    A key reaches only the systems it is created for, so it needs at least one: there is
    no key for every system (what no scope covers, such as the audit trail, needs a login).
    """
    if not system_ids:
        raise ValueError("an API key needs at least one system to be scoped to")
    generated = generate_api_key()
    key = await repo.create_api_key(
        session,
        prefix=generated.prefix,
        key_hash=generated.key_hash,
        name=name,
        user_id=owner.id,
        system_scope=sorted(set(system_ids)),
        tier=tier or owner.tier,
    )
    return key, generated.plaintext


async def verify_api_key(session: AsyncSession, plaintext: str) -> tuple[ApiKey, User]:
    """The key and its owner, or ApiKeyError saying why the key is refused."""
    key = await repo.get_api_key_by_prefix(session, parse_prefix(plaintext))
    # Compare even when no row matched, so a miss takes as long as a wrong secret.
    matches = hmac.compare_digest(key.key_hash if key is not None else hash_key(""), hash_key(plaintext))
    if key is None or not matches:
        raise ApiKeyError("API key is invalid")
    if key.revoked_at is not None:
        raise ApiKeyError("API key has been revoked")
    owner = await users_repo.get_user(session, key.user_id)
    if owner is None or not owner.is_active:
        raise ApiKeyError("API key owner is disabled")
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        await repo.touch_api_key(session, key, now)
    return key, owner


async def revoke_api_key(session: AsyncSession, key_id: int) -> bool:
    return await repo.revoke_api_key(session, key_id)
