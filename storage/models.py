"""The relational schema, as SQLAlchemy 2 declarative models.

All tables live in this one module so Alembic's ``target_metadata`` sees them;
every schema change also gets a numbered migration in ``storage/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

USER_ROLES = ("admin", "engineer", "viewer")
MEMBER_PERMISSIONS = ("read", "write")

# Stable constraint names, so later migrations can alter them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite keeps no offset and hands back naive datetimes; comparing those with
    aware ones (token expiry) would raise, so reads are re-tagged as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON, list[dict[str, Any]]: JSON}


def _created_at() -> Mapped[datetime]:
    return mapped_column(default=utcnow, server_default=func.current_timestamp())


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('admin', 'engineer', 'viewer')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    tier: Mapped[str] = mapped_column(String(32), default="free", server_default="free")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = _created_at()


class ApiKey(Base):
    """A machine credential ``hdx_<prefix>_<secret>``; only a digest of it is stored.

    ``key_hash`` is a plain SHA-256 hex digest, not argon2: the secret is 256 random
    bits from ``secrets``, so it cannot be brute-forced or found in a dictionary and a
    slow, salted hash would only cost CPU on every request.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    system_scope: Mapped[list[str]] = mapped_column(default=list)
    tier: Mapped[str] = mapped_column(String(32), default="free", server_default="free")
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created_at()
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class RefreshToken(Base):
    """One issued refresh token; all tokens from one login share a ``family_id``."""

    __tablename__ = "refresh_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created_at()


class System(Base):
    """A monitored hydraulic system (rig), identified by a readable id like ``rig-01``."""

    __tablename__ = "systems"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(64), default="hydraulic_rig", server_default="hydraulic_rig")
    location: Mapped[str | None] = mapped_column(String(200), default=None)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    channels: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    topology: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = _created_at()


class SystemMember(Base):
    """Access to a system granted to a user who does not own it."""

    __tablename__ = "system_members"
    __table_args__ = (CheckConstraint("permission IN ('read', 'write')", name="permission"),)

    system_id: Mapped[str] = mapped_column(ForeignKey("systems.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    permission: Mapped[str] = mapped_column(String(16), default="read", server_default="read")
    granted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = _created_at()
