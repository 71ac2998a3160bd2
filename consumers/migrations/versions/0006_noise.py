"""Noise control: silences, notification groups, inhibition sources; notification kind and
group key.

Revision ID: 0006_noise
Revises: 0004_scale
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_noise"
down_revision = "0004_scale"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("kind", sa.String(), nullable=False, server_default="alert"))
        batch.add_column(sa.Column("group_key", sa.String()))
    op.create_index(
        "ix_notifications_group", "notifications", ["group_key", "fingerprint", "created_at"]
    )
    # Leads with kind, so the per-receiver follow-up lookup keeps the fingerprint index.
    op.create_index("ix_notifications_storm", "notifications", ["kind", "receiver", "created_at"])
    op.create_table(
        "silences",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("matchers", sa.JSON, nullable=False),
        sa.Column("starts_at", Time, nullable=False),
        sa.Column("ends_at", Time, nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_at", Time, nullable=False),
    )
    op.create_index("ix_silences_ends", "silences", ["ends_at"])
    op.create_table(
        "notification_groups",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("receiver", sa.String(), nullable=False),
        sa.Column("route", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("next_flush_at", Time),
        sa.Column("last_flush_at", Time),
    )
    op.create_table(
        "inhibitions",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("equal_key", sa.String(), primary_key=True),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("until", Time, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inhibitions")
    op.drop_table("notification_groups")
    op.drop_table("silences")
    op.drop_index("ix_notifications_storm", "notifications")
    op.drop_index("ix_notifications_group", "notifications")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("group_key")
        batch.drop_column("kind")
