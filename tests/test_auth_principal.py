"""can_access_system on plain model objects: no database needed for the rules themselves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from auth.principal import Principal, can_access_system
from auth.roles import Action, Role, role_allows
from storage.tables import System, SystemMember

OWNER, MEMBER, STRANGER, ADMIN = 1, 2, 3, 4
RIG = System(id="rig-01", name="rig", owner_id=OWNER)


def principal(user_id: int, role: Role, scope: set[str] | None = None) -> Principal:
    via = "api_key" if scope is not None else "jwt"
    return Principal(
        user_id, f"u{user_id}", role, "free", via=via, system_scope=frozenset(scope) if scope is not None else None
    )


def member(user_id: int, permission: str = "read") -> SystemMember:
    return SystemMember(system_id="rig-01", user_id=user_id, permission=permission)


def test_admin_sees_every_system() -> None:
    assert can_access_system(principal(ADMIN, Role.ADMIN), RIG, None)
    assert can_access_system(principal(ADMIN, Role.ADMIN), RIG, None, write=True)


def test_owner_and_members_only() -> None:
    assert can_access_system(principal(OWNER, Role.ENGINEER), RIG, None, write=True)
    assert can_access_system(principal(MEMBER, Role.ENGINEER), RIG, member(MEMBER))
    assert not can_access_system(principal(STRANGER, Role.ENGINEER), RIG, None)
    # Somebody else's membership row grants nothing.
    assert not can_access_system(principal(STRANGER, Role.ENGINEER), RIG, member(MEMBER))


def test_writing_needs_a_write_grant_and_a_writing_role() -> None:
    assert not can_access_system(principal(MEMBER, Role.ENGINEER), RIG, member(MEMBER, "read"), write=True)
    assert can_access_system(principal(MEMBER, Role.ENGINEER), RIG, member(MEMBER, "write"), write=True)
    assert not can_access_system(principal(MEMBER, Role.VIEWER), RIG, member(MEMBER, "write"), write=True)
    assert can_access_system(principal(MEMBER, Role.VIEWER), RIG, member(MEMBER, "write"))


def test_api_keys_are_limited_to_their_scope_and_their_owner() -> None:
    assert can_access_system(principal(OWNER, Role.ENGINEER, {"rig-01"}), RIG, None)
    assert not can_access_system(principal(OWNER, Role.ENGINEER, {"rig-02"}), RIG, None)
    assert not can_access_system(principal(ADMIN, Role.ADMIN, {"rig-02"}), RIG, None)  # scope binds admins too
    # In scope, but the key's owner has no access to the system.
    assert not can_access_system(principal(STRANGER, Role.ENGINEER, {"rig-01"}), RIG, None)


def test_an_api_key_principal_always_has_a_scope() -> None:
    with pytest.raises(ValueError, match="scope"):
        Principal(ADMIN, "root", Role.ADMIN, "free", via="api_key")
    nothing = principal(ADMIN, Role.ADMIN, set())  # a key stored with no systems reaches none
    assert not can_access_system(nothing, RIG, None)


def test_deleted_systems_are_out_of_reach() -> None:
    deleted = System(id="rig-09", name="gone", owner_id=OWNER, deleted_at=datetime.now(UTC))
    assert not can_access_system(principal(ADMIN, Role.ADMIN), deleted, None)
    assert not can_access_system(principal(OWNER, Role.ENGINEER), deleted, None)


@pytest.mark.parametrize(
    "role, action, allowed",
    [
        (Role.VIEWER, Action.READ_SYSTEM, True),
        (Role.VIEWER, Action.WRITE_SYSTEM, False),
        (Role.ENGINEER, Action.WRITE_SYSTEM, True),
        (Role.ENGINEER, Action.MANAGE_USERS, False),
        (Role.ENGINEER, Action.SEE_ALL_SYSTEMS, False),
        (Role.ADMIN, Action.MANAGE_USERS, True),
        ("viewer", Action.RUN_DIAGNOSIS, True),
    ],
)
def test_role_actions(role: Role | str, action: Action, allowed: bool) -> None:
    assert role_allows(role, action) is allowed
