"""Notifications outbox.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("dedup_key", sa.String(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("severity", sa.Integer, nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("throttle_key", sa.String(), nullable=False),
        sa.Column("receiver", sa.String(), nullable=False),
        sa.Column("receiver_type", sa.String(), nullable=False),
        sa.Column("followup", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("event_time", Time, nullable=False),
        sa.Column("alert", sa.JSON, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("next_attempt_at", Time, nullable=False),
        sa.Column("lease_until", Time),
        sa.Column("claim", sa.String()),
        sa.Column("sent_at", Time),
        sa.Column("reason", sa.String()),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("dedup_key", name="uq_notifications_dedup"),
    )
    op.create_index("ix_notifications_due", "notifications", ["state", "next_attempt_at"])
    op.create_index(
        "ix_notifications_throttle",
        "notifications",
        ["rule", "throttle_key", "receiver", "created_at"],
    )
    op.create_index("ix_notifications_fingerprint", "notifications", ["fingerprint"])


def downgrade() -> None:
    op.drop_table("notifications")
