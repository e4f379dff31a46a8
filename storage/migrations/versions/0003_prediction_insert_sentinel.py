"""A sentinel column on ``predictions`` for batched, ordered inserts.

The history writer stores many rows in one ``INSERT … RETURNING id`` and hands
each request its own id, so it needs the ids back in row order. PostgreSQL's
SERIAL gives SQLAlchemy an ordering to sort by; SQLite's ROWID does not, and
without a sentinel SQLAlchemy falls back to one INSERT per row there. The
column holds each row's position within a multi-row INSERT (NULL after a
single-row one) and means nothing else.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("insert_sentinel", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("insert_sentinel")
