from __future__ import annotations

import re

import pytest

from auth.api_keys import ApiKeyError, create_api_key, generate_api_key, hash_key, revoke_api_key, verify_api_key
from storage.db import Database
from tests.fixtures.db import add_system, add_user

in_session_loop = pytest.mark.asyncio(loop_scope="session")


def test_generated_keys_have_the_documented_shape_and_are_unique() -> None:
    keys = [generate_api_key() for _ in range(50)]
    for key in keys:
        assert re.fullmatch(r"hdx_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key.plaintext)
        assert key.plaintext.split("_")[1] == key.prefix
        assert key.key_hash == hash_key(key.plaintext) and key.plaintext not in key.key_hash
    assert len({k.plaintext for k in keys}) == len({k.prefix for k in keys}) == 50


@in_session_loop
async def test_a_key_is_scoped_to_at_least_one_system(db: Database) -> None:
    async with db.session() as session:
        owner = await add_user(session, "owner", "admin")
        with pytest.raises(ValueError, match="at least one system"):
            await create_api_key(session, owner=owner, name="everything", system_ids=[])


@in_session_loop
async def test_create_verify_revoke(db: Database) -> None:
    async with db.session() as session:
        owner = await add_user(session, "gateway-owner", tier="pro")
        await add_system(session, "rig-01", owner)
        key, plaintext = await create_api_key(session, owner=owner, name="gateway", system_ids=["rig-01", "rig-01"])
        await session.commit()
        assert plaintext.startswith(f"hdx_{key.prefix}_")
        assert key.key_hash != plaintext and plaintext not in key.key_hash  # only the digest is stored
        assert (key.system_scope, key.tier) == (["rig-01"], "pro")  # deduplicated; owner's tier by default

    async with db.session() as session:
        found, found_owner = await verify_api_key(session, plaintext)
        await session.commit()
        assert (found.id, found_owner.id) == (key.id, owner.id)
        assert found.last_used_at is not None

        assert await revoke_api_key(session, key.id) is True
        await session.commit()
        with pytest.raises(ApiKeyError, match="has been revoked"):
            await verify_api_key(session, plaintext)


@in_session_loop
async def test_wrong_secret_unknown_prefix_and_garbage_are_refused(db: Database) -> None:
    async with db.session() as session:
        owner = await add_user(session, "owner")
        key, plaintext = await create_api_key(session, owner=owner, name="k", system_ids=["rig-01"], tier="free")
        await session.commit()
        wrong_secret = plaintext[:-4] + ("AAAA" if not plaintext.endswith("AAAA") else "BBBB")
        with pytest.raises(ApiKeyError, match="API key is invalid"):
            await verify_api_key(session, wrong_secret)
        with pytest.raises(ApiKeyError, match="API key is invalid"):
            await verify_api_key(session, generate_api_key().plaintext)  # well-formed, unknown prefix
        for garbage in ("", "hdx_", "Bearer abc", f"xyz_{key.prefix}_secret", "hdx_short_secret"):
            with pytest.raises(ApiKeyError, match="malformed"):
                await verify_api_key(session, garbage)


@in_session_loop
async def test_keys_of_disabled_owners_are_refused(db: Database) -> None:
    async with db.session() as session:
        owner = await add_user(session, "leaver")
        _, plaintext = await create_api_key(session, owner=owner, name="k", system_ids=["rig-01"])
        owner.is_active = False
        await session.commit()
        with pytest.raises(ApiKeyError, match="owner is disabled"):
            await verify_api_key(session, plaintext)
