"""Who is calling, and which systems they may reach."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from auth.roles import Action, Role, role_allows
from auth.tokens import TokenClaims
from storage.tables import System, SystemMember


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    role: Role
    tier: str
    via: Literal["jwt", "api_key"]
    api_key_id: int | None = None
    # Only for API keys: the system ids the key was created for.
    system_scope: frozenset[str] | None = None
    # Only for bearer tokens: the verified access-token claims (logout needs jti/exp/fam).
    token: TokenClaims | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # None means "every system the user may reach": a login's. A key without a scope would be
        # a key for everything, which no route may take it for.
        if self.via == "api_key" and self.system_scope is None:
            raise ValueError("an API key's principal needs the key's system scope (possibly empty)")

    def allows(self, action: Action) -> bool:
        return role_allows(self.role, action)


def can_access_system(
    principal: Principal, system: System, membership: SystemMember | None, *, write: bool = False
) -> bool:
    """Whether ``principal`` may read (or, with ``write``, change) ``system``.

    ``membership`` is the principal's user's membership row for this system, if any.
    Admins reach every system; users the ones they own or were granted; an API key
    only the systems in its scope, and of those only what its owner could reach.
    """
    if system.deleted_at is not None:
        return False
    if principal.system_scope is not None and system.id not in principal.system_scope:
        return False
    if write and not principal.allows(Action.WRITE_SYSTEM):
        return False
    if principal.allows(Action.SEE_ALL_SYSTEMS) or system.owner_id == principal.user_id:
        return True
    if membership is None or membership.user_id != principal.user_id or membership.system_id != system.id:
        return False
    return membership.permission == "write" if write else True
