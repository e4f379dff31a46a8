"""Password hashing with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile).

One hash costs tens to hundreds of milliseconds of CPU by design. On a request
path use the ``*_async`` forms: they run in a small pool of threads of their own
(argon2-cffi releases the GIL), so the ingress event loop keeps serving every
other request meanwhile, and a flood of logins queues there instead of taking
every core.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="argon2")

# Verified against when the username is unknown, so that a miss costs as long as a hit
# and response times do not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("hdx-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> tuple[bool, str | None]:
    """``(matches, new_hash)``; ``new_hash`` is set when the stored hash uses outdated
    parameters and should be replaced. ``password_hash=None`` burns the same time and fails.
    """
    try:
        _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False, None
    if password_hash is None:
        return False, None
    return True, (_hasher.hash(password) if _hasher.check_needs_rehash(password_hash) else None)


async def verify_password_async(password_hash: str | None, password: str) -> tuple[bool, str | None]:
    """``verify_password`` off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_pool, verify_password, password_hash, password)
