from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.repositories import api_keys as keys_repo
from storage.repositories import refresh_tokens as refresh_repo
from storage.repositories import systems as systems_repo
from storage.repositories import users as users_repo

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _user(session, username: str = "ada", role: str = "engineer"):
    user = await users_repo.create_user(session, username=username, password_hash="h", role=role)
    await session.commit()
    return user


async def test_users_round_trip(db: Database) -> None:
    async with db.session() as session:
        created = await _user(session, "ada", "admin")
        await _user(session, "bob", "viewer")
    async with db.session() as session:  # a new session reads from the database, not the identity map
        ada = await users_repo.get_user_by_username(session, "ada")
        assert ada is not None and ada.id == created.id
        assert (ada.role, ada.tier, ada.is_active) == ("admin", "free", True)
        assert ada.created_at.tzinfo is not None
        assert abs(datetime.now(UTC) - ada.created_at) < timedelta(minutes=1)
        assert [u.username for u in await users_repo.list_users(session)] == ["ada", "bob"]
        assert await users_repo.get_user_by_username(session, "nobody") is None


async def test_username_is_unique_and_role_is_checked(db: Database) -> None:
    async with db.session() as session:
        await _user(session, "ada")
        with pytest.raises(IntegrityError):
            await users_repo.create_user(session, username="ada", password_hash="h", role="viewer")
        await session.rollback()
        with pytest.raises(ValueError, match="role must be one of"):
            await users_repo.create_user(session, username="eve", password_hash="h", role="root")


async def test_api_keys_round_trip_and_revoke(db: Database) -> None:
    async with db.session() as session:
        owner = await _user(session)
        key = await keys_repo.create_api_key(
            session,
            prefix="abc123",
            key_hash="f" * 64,
            name="gateway",
            user_id=owner.id,
            system_scope=["rig-02", "rig-01"],
            tier="pro",
        )
        await session.commit()
    async with db.session() as session:
        loaded = await keys_repo.get_api_key_by_prefix(session, "abc123")
        assert loaded is not None and loaded.id == key.id
        assert loaded.system_scope == ["rig-02", "rig-01"]  # JSON list survives the round trip
        assert (loaded.tier, loaded.revoked_at, loaded.last_used_at) == ("pro", None, None)
        assert await keys_repo.revoke_api_key(session, key.id) is True
        assert await keys_repo.revoke_api_key(session, key.id) is False  # already revoked
        await session.commit()
    async with db.session() as session:
        assert (await keys_repo.get_api_key(session, key.id)).revoked_at is not None


async def test_refresh_token_can_be_claimed_once_and_family_revoked(db: Database) -> None:
    expires = datetime.now(UTC) + timedelta(days=1)
    async with db.session() as session:
        user = await _user(session)
        for jti in ("a1", "a2"):
            await refresh_repo.add_refresh_token(
                session, jti=jti, family_id="fam-a", user_id=user.id, expires_at=expires
            )
        await refresh_repo.add_refresh_token(session, jti="b1", family_id="fam-b", user_id=user.id, expires_at=expires)
        await session.commit()

        assert await refresh_repo.mark_used(session, "a1") is True
        assert await refresh_repo.mark_used(session, "a1") is False
        assert await refresh_repo.revoke_family(session, "fam-a") == 2
        assert await refresh_repo.mark_used(session, "a2") is False  # revoked tokens cannot be claimed
        await session.commit()
    async with db.session() as session:
        a2 = await refresh_repo.get_refresh_token(session, "a2")
        b1 = await refresh_repo.get_refresh_token(session, "b1")
        assert a2.revoked_at is not None and b1.revoked_at is None
        assert abs(a2.expires_at - expires) < timedelta(seconds=1)  # aware UTC on both backends


async def test_systems_and_memberships(db: Database) -> None:
    async with db.session() as session:
        owner, guest = await _user(session, "owner"), await _user(session, "guest", "viewer")
        await systems_repo.create_system(
            session,
            system_id="rig-01",
            name="Test rig",
            owner_id=owner.id,
            location="hall 2",
            channels=[{"name": "PS1", "unit": "bar", "hz": 100}],
            topology={"pump": ["PS1"]},
        )
        await systems_repo.grant_membership(session, system_id="rig-01", user_id=guest.id, granted_by=owner.id)
        await session.commit()
    async with db.session() as session:
        system = await systems_repo.get_system(session, "rig-01")
        assert system is not None and system.owner_id == owner.id
        assert system.channels == [{"name": "PS1", "unit": "bar", "hz": 100}]
        assert system.topology == {"pump": ["PS1"]}
        member = await systems_repo.get_membership(session, "rig-01", guest.id)
        assert (member.permission, member.granted_by) == ("read", owner.id)
        await systems_repo.grant_membership(session, system_id="rig-01", user_id=guest.id, permission="write")
        assert (await systems_repo.get_membership(session, "rig-01", guest.id)).permission == "write"
        assert await systems_repo.get_membership(session, "rig-01", owner.id) is None

        await systems_repo.soft_delete_system(session, system)
        await session.commit()
        assert await systems_repo.get_system(session, "rig-01") is None
        assert (await systems_repo.get_system(session, "rig-01", include_deleted=True)).deleted_at is not None
        assert await systems_repo.list_systems(session) == []
        assert await systems_repo.revoke_membership(session, "rig-01", guest.id) is True
        assert await systems_repo.revoke_membership(session, "rig-01", guest.id) is False


async def test_foreign_keys_are_enforced(db: Database) -> None:
    # SQLite only enforces them with PRAGMA foreign_keys=ON, which create_engine sets.
    async with db.session() as session:
        with pytest.raises(IntegrityError):
            await systems_repo.create_system(session, system_id="rig-x", name="orphan", owner_id=999_999)


async def test_deleting_a_user_cascades_to_their_tokens(db: Database) -> None:
    async with db.session() as session:
        user = await _user(session)
        await refresh_repo.add_refresh_token(
            session, jti="t1", family_id="f", user_id=user.id, expires_at=datetime.now(UTC)
        )
        await session.commit()
        await session.delete(user)
        await session.commit()
        session.expunge_all()
        assert await refresh_repo.get_refresh_token(session, "t1") is None
