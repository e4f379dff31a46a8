"""Readings, prediction history, operator feedback and the audit trail.

On PostgreSQL with the TimescaleDB extension available, ``readings`` becomes a
hypertable on ``started_at``; elsewhere it is a plain table with a
(system_id, started_at) index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _timestamp(name: str, *, nullable: bool = True, now: bool = False) -> sa.Column:
    default = sa.func.current_timestamp() if now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def _timescale_available(bind) -> bool:
    if bind.dialect.name != "postgresql":
        return False
    found = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")).first()
    return found is not None


def upgrade() -> None:
    op.create_table(
        "readings",
        sa.Column("system_id", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        _timestamp("started_at", nullable=False),
        sa.Column("sensor_data", sa.JSON(), nullable=False),
        _timestamp("received_at", nullable=False, now=True),
        sa.ForeignKeyConstraint(
            ["system_id"], ["systems.id"], name=op.f("fk_readings_system_id_systems"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("system_id", "idempotency_key", name=op.f("pk_readings")),
    )
    op.create_index("ix_readings_system_id_started_at", "readings", ["system_id", "started_at"])
    bind = op.get_bind()
    if _timescale_available(bind):
        # A hypertable's unique keys must contain its time column, so the key widens to
        # (system_id, idempotency_key, started_at): a retry re-sends the same started_at,
        # so it still conflicts and is stored once.
        op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        op.drop_constraint("pk_readings", "readings", type_="primary")
        op.create_primary_key("pk_readings", "readings", ["system_id", "idempotency_key", "started_at"])
        op.execute("SELECT create_hypertable('readings', 'started_at', migrate_data => true)")

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("system_id", sa.String(64), nullable=False),
        _timestamp("created_at", nullable=False, now=True),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("is_anomaly", sa.Boolean(), nullable=False),
        sa.Column("anomaly_score", sa.Float(), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("sensor_data", sa.JSON(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["system_id"], ["systems.id"], name=op.f("fk_predictions_system_id_systems"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_predictions_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    op.create_index("ix_predictions_system_id_created_at", "predictions", ["system_id", "created_at"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("system_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("components", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("learned", sa.JSON(), nullable=False),
        _timestamp("created_at", nullable=False, now=True),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_feedback_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["system_id"], ["systems.id"], name=op.f("fk_feedback_system_id_systems"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_feedback_user_id_users"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    op.create_index(op.f("ix_feedback_prediction_id"), "feedback", ["prediction_id"])
    op.create_index(op.f("ix_feedback_system_id"), "feedback", ["system_id"])

    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _timestamp("created_at", nullable=False, now=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(64), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("system_id", sa.String(64), nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("client", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    op.create_index(op.f("ix_audit_records_created_at"), "audit_records", ["created_at"])
    op.create_index(op.f("ix_audit_records_user_id"), "audit_records", ["user_id"])
    op.create_index(op.f("ix_audit_records_system_id"), "audit_records", ["system_id"])


def downgrade() -> None:
    op.drop_table("audit_records")
    op.drop_table("feedback")
    op.drop_table("predictions")
    op.drop_table("readings")
