"""Several replicas: named leases.

Revision ID: 0004_scale
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_scale"
down_revision = "0002"  # the brief's "0002_notifications"; re-chained at merge
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("acquired_at", sa.Double, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
