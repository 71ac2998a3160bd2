"""Failure causes and the workspace's ARM ID: events.ResourceId, events.cause,
events.cause_detail, runs.cause (issue 16 item 1, issue 15 item 3). Rows stored before this
have none: their cause is unknown to the store, not "unknown" (nothing classified them).

Revision ID: 0007_causes
Revises: 0005_rules
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_causes"
down_revision = "0005_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On PostgreSQL events is partitioned: a column added to the parent reaches every partition.
    op.add_column("events", sa.Column("ResourceId", sa.String()))
    op.add_column("events", sa.Column("cause", sa.String()))
    op.add_column("events", sa.Column("cause_detail", sa.Text))
    op.add_column("runs", sa.Column("cause", sa.String()))
    op.create_index("ix_runs_cause_last", "runs", ["cause", "LastSeen"])


def downgrade() -> None:
    op.drop_index("ix_runs_cause_last", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cause")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("cause_detail")
        batch.drop_column("cause")
        batch.drop_column("ResourceId")
