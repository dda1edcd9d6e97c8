"""Create policy_history: every policy version that was live, with its content, when and by whom.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("policy_id", sa.String(128), nullable=False),
        sa.Column("version", sa.String(12), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("live_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
    )
    op.create_index("ix_policy_history_policy_id", "policy_history", ["policy_id", "live_at"])


def downgrade() -> None:
    op.drop_index("ix_policy_history_policy_id", table_name="policy_history")
    op.drop_table("policy_history")
