"""The web console's reads: a run's notifications, and the newest notifications (all, or in
one state), each an index range scan instead of a sort of the whole table.

Revision ID: 0008_console
Revises: 0007_causes
"""

from __future__ import annotations

from alembic import op

revision = "0008_console"
down_revision = "0007_causes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notifications_run", "notifications", ["run_id", "created_at", "id"])
    op.create_index("ix_notifications_created", "notifications", ["created_at", "id"])
    op.create_index(
        "ix_notifications_state_created", "notifications", ["state", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_state_created", "notifications")
    op.drop_index("ix_notifications_created", "notifications")
    op.drop_index("ix_notifications_run", "notifications")
