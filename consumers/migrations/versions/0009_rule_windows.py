"""The scheduled rules' window state and where it stands in the events table, so that a
warm-up loads it instead of replaying the longest window (docs/deploys.md, "Rule warm-up").

Revision ID: 0009_rule_windows
Revises: 0008_console
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_rule_windows"
down_revision = "0008_console"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rule_windows",
        sa.Column("rule", sa.String(), primary_key=True),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
    )
    op.create_table(
        "rule_feed",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("positions", sa.Text, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rule_feed")
    op.drop_table("rule_windows")
