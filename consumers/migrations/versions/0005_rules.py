"""Alert instance states of the scheduled rule kinds.

Revision ID: 0005_rules
Revises: 0006_noise
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_rules"
down_revision = "0006_noise"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_states",
        sa.Column("rule", sa.String(), primary_key=True),
        sa.Column("group_key", sa.String(), primary_key=True),
        sa.Column("firing", sa.Boolean, nullable=False),
        sa.Column("history", sa.String(), nullable=False),
        sa.Column("clear", sa.Integer, nullable=False),
        sa.Column("instance", sa.String()),
        sa.Column("since", Time),
        sa.Column("alert", sa.JSON),
        sa.Column("updated_at", Time, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_states")
