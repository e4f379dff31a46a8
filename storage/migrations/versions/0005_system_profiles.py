"""Equipment profiles: every system records the profile its diagnoses use and why.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("systems") as batch:
        batch.add_column(sa.Column("profile", sa.String(64), nullable=True))
        batch.add_column(sa.Column("profile_reason", sa.String(1000), nullable=True))
        batch.add_column(sa.Column("profile_explicit", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("systems") as batch:
        batch.drop_column("profile_explicit")
        batch.drop_column("profile_reason")
        batch.drop_column("profile")
