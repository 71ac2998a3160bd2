"""Several replicas: named leases; on PostgreSQL, events partitioned by TimeGenerated.

The existing events table becomes the default partition of a new partitioned `events`
(no row is copied); consumers.store.partitions creates the range partitions ahead of time
and moves rows out of the default one as their range gets a partition.

Revision ID: 0004_scale
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_scale"
down_revision = "0003_lifecycle"
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

    if op.get_bind().dialect.name == "postgresql":
        _partition_events()


_INDEXES = {
    "ix_events_time": '("TimeGenerated")',
    "ix_events_status_time": '("Status", "TimeGenerated")',
}


def _partition_events() -> None:
    # Index and constraint names are per schema: the old table's step aside first.
    op.execute("ALTER TABLE events RENAME TO events_default")
    # its key becomes (id, TimeGenerated) like every partition's; built when attached
    op.execute("ALTER TABLE events_default DROP CONSTRAINT events_pkey")
    op.execute(
        "ALTER TABLE events_default RENAME CONSTRAINT uq_events_natural TO events_default_natural"
    )
    for name in _INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {name.replace('ix_events', 'events_default')}")
    op.execute(
        "CREATE TABLE events (LIKE events_default INCLUDING DEFAULTS) "
        'PARTITION BY RANGE ("TimeGenerated")'
    )
    # A partitioned table's unique keys include the partition key; the natural key already does.
    op.execute('ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id, "TimeGenerated")')
    op.execute(
        "ALTER TABLE events ADD CONSTRAINT uq_events_natural "
        'UNIQUE ("RunId", "TimeGenerated", "Status")'
    )
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON events {columns}")
    op.execute("ALTER TABLE events ATTACH PARTITION events_default DEFAULT")


def downgrade() -> None:
    op.drop_table("leases")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY NONE")
    op.execute("CREATE TABLE events_flat (LIKE events INCLUDING DEFAULTS)")
    op.execute("INSERT INTO events_flat SELECT * FROM events")
    op.execute("DROP TABLE events")
    op.execute("ALTER TABLE events_flat RENAME TO events")
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY events.id")
    op.execute("ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE events ADD CONSTRAINT uq_events_natural "
        'UNIQUE ("RunId", "TimeGenerated", "Status")'
    )
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON events {columns}")
