from __future__ import annotations

import asyncio

from argon2 import PasswordHasher

from auth.passwords import hash_password, verify_password, verify_password_async


def test_hash_is_argon2id_salted_and_verifies() -> None:
    first, second = hash_password("s3cret pass"), hash_password("s3cret pass")
    assert first.startswith("$argon2id$")
    assert first != second  # random salt
    assert verify_password(first, "s3cret pass") == (True, None)


def test_wrong_password_and_garbage_hash_fail() -> None:
    stored = hash_password("s3cret pass")
    assert verify_password(stored, "S3cret pass") == (False, None)
    assert verify_password("not-a-hash", "s3cret pass") == (False, None)


def test_unknown_user_never_verifies() -> None:
    assert verify_password(None, "hdx-no-such-user") == (False, None)


def test_outdated_parameters_ask_for_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash("s3cret pass")
    matches, new_hash = verify_password(weak, "s3cret pass")
    assert matches and new_hash is not None and new_hash != weak
    assert verify_password(new_hash, "s3cret pass") == (True, None)


async def test_async_hashing_leaves_the_event_loop_free() -> None:
    stored = hash_password("s3cret pass")
    events: list[str] = []

    async def ticker() -> None:
        while "verified" not in events:
            events.append("tick")
            await asyncio.sleep(0)

    async def verify() -> None:
        assert await verify_password_async(stored, "s3cret pass") == (True, None)
        assert await verify_password_async(None, "s3cret pass") == (False, None)
        assert await verify_password_async(hash_password("other"), "other") == (True, None)
        events.append("verified")

    await asyncio.gather(verify(), ticker())
    # The loop kept running other work while argon2 ran: blocking calls would have let no tick in.
    assert events.index("verified") > 100
