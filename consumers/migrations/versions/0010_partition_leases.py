"""Partition leases for `kafka.assignment: store`: replicas share the topic's partitions
through the store instead of the broker's consumer group (docs/deploys.md).

Revision ID: 0010_partition_leases
Revises: 0009_rule_windows
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_partition_leases"
down_revision = "0009_rule_windows"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assignment_members",
        sa.Column("consumer_group", sa.String(), primary_key=True),
        sa.Column("topic", sa.String(), primary_key=True),
        sa.Column("member", sa.String(), primary_key=True),
        sa.Column("renewed_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_table(
        "partition_leases",
        sa.Column("consumer_group", sa.String(), primary_key=True),
        sa.Column("topic", sa.String(), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("acquired_at", sa.Double, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("partition_leases")
    op.drop_table("assignment_members")
