"""Roles and what each may do.

A role is global; which *systems* a user may touch is decided per system in
``auth.principal`` (ownership, membership, API-key scope).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"  # operates the platform: users, keys, every system
    ENGINEER = "engineer"  # works on their systems: register rigs, ingest, diagnose, give feedback
    VIEWER = "viewer"  # reads results of the systems shared with them


class Action(StrEnum):
    READ_SYSTEM = "read_system"  # readings, predictions, assistant answers
    RUN_DIAGNOSIS = "run_diagnosis"
    WRITE_SYSTEM = "write_system"  # register/edit systems, ingest readings, send feedback
    MANAGE_MEMBERS = "manage_members"  # share one's own systems with others
    MANAGE_OWN_API_KEYS = "manage_own_api_keys"
    MANAGE_USERS = "manage_users"
    SEE_ALL_SYSTEMS = "see_all_systems"


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ_SYSTEM, Action.RUN_DIAGNOSIS}),
    Role.ENGINEER: frozenset(
        {
            Action.READ_SYSTEM,
            Action.RUN_DIAGNOSIS,
            Action.WRITE_SYSTEM,
            Action.MANAGE_MEMBERS,
            Action.MANAGE_OWN_API_KEYS,
        }
    ),
    Role.ADMIN: frozenset(Action),
}


def role_allows(role: Role | str, action: Action) -> bool:
    return action in ROLE_ACTIONS[Role(role)]
