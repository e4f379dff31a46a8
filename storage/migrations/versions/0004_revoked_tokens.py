"""Revoked access tokens and sessions, durable and shared by every ingress replica.

Logout and refresh-token reuse used to be kept only in the key-value store: in
the embedded default that is one replica's memory, and with Redis an outage lost
them. The key-value store stays the fast path; this table is the truth.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revoked_tokens",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.current_timestamp()),
        sa.CheckConstraint("kind IN ('jti', 'family')", name=op.f("ck_revoked_tokens_kind")),
        sa.PrimaryKeyConstraint("kind", "token_id", name=op.f("pk_revoked_tokens")),
    )
    op.create_index(op.f("ix_revoked_tokens_expires_at"), "revoked_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_revoked_tokens_expires_at"), table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
