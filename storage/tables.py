"""The relational schema, as SQLAlchemy 2 declarative models.

All tables live in this one module so Alembic's ``target_metadata`` sees them;
every schema change also gets a numbered migration in ``storage/migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, orm_insert_sentinel

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
    return datetime.now(UTC)


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
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
    # The equipment profile its diagnoses use (api.services.profiles chooses it); None with
    # no channels declared means the default profile, with channels that none fits.
    profile: Mapped[str | None] = mapped_column(String(64), default=None)
    profile_reason: Mapped[str | None] = mapped_column(String(1000), default=None)
    profile_explicit: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
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


class Reading(Base):
    """One ingested load cycle of a system, its channels stored as JSON ``{channel: [samples]}``.

    The primary key is the client's idempotency key within the system, so a retried
    batch inserts nothing twice (``INSERT … ON CONFLICT DO NOTHING``).
    """

    __tablename__ = "readings"
    __table_args__ = (Index("ix_readings_system_id_started_at", "system_id", "started_at"),)

    system_id: Mapped[str] = mapped_column(ForeignKey("systems.id", ondelete="CASCADE"), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime]
    sensor_data: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = _created_at()


class PredictionRecord(Base):
    """A served diagnosis, with the raw cycle it came from so feedback can learn from it."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_system_id_created_at", "system_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    system_id: Mapped[str] = mapped_column(ForeignKey("systems.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = _created_at()
    trace_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # predict | batch | ingestion
    cache_hit: Mapped[bool] = mapped_column(Boolean)
    severity: Mapped[str] = mapped_column(String(16))
    is_anomaly: Mapped[bool] = mapped_column(Boolean)
    anomaly_score: Mapped[float] = mapped_column(Float)
    model_versions: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any]]
    sensor_data: Mapped[dict[str, Any]]
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    # Lets one multi-row INSERT … RETURNING give the ids back in row order on SQLite too
    # (migration 0003): a multi-row insert sets it to each row's position in the statement,
    # a single-row insert leaves it NULL; it means nothing else.
    insert_sentinel: Mapped[int | None] = orm_insert_sentinel()


class Feedback(Base):
    """An operator's confirmed component levels for one stored prediction."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    system_id: Mapped[str] = mapped_column(ForeignKey("systems.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    components: Mapped[dict[str, Any]]
    note: Mapped[str | None] = mapped_column(Text, default=None)
    learned: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the Adaptive model's answer, or its error
    created_at: Mapped[datetime] = _created_at()


class AuditRecord(Base):
    """One API call. No foreign keys: the trail outlives deleted users and systems."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.current_timestamp(), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    username: Mapped[str | None] = mapped_column(String(64), default=None)
    api_key_id: Mapped[int | None] = mapped_column(Integer, default=None)
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(200))  # the route template, e.g. /api/v1/systems/{system_id}
    path: Mapped[str] = mapped_column(String(500))
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | error | auth_failed | denied | rate_limited
    latency_ms: Mapped[float] = mapped_column(Float)
    system_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    trace_id: Mapped[str] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(64), default=None)


class RevokedToken(Base):
    """An access token (``kind='jti'``) or a whole login session (``kind='family'``) ended
    before its access tokens expire: logout and refresh-token reuse. The durable record
    every ingress replica reads (``auth.revocations``); pruned once ``expires_at`` passes.
    """

    __tablename__ = "revoked_tokens"
    __table_args__ = (CheckConstraint("kind IN ('jti', 'family')", name="kind"),)

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime] = _created_at()
