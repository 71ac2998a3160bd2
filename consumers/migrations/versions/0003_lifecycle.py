"""Run lifecycle: a run's description and the time of its latest tag/property update.

Revision ID: 0003_lifecycle
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_lifecycle"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("Description", sa.Text))
        batch.add_column(sa.Column("UpdatedTime", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("UpdatedTime")
        batch.drop_column("Description")
