"""The events table partitioned by TimeGenerated on PostgreSQL.

Why: at tens of millions of events a day, retention by DELETE rewrites and vacuums the
table all day long; dropping a whole partition is a catalog change. Time-bounded queries
(windowed rules, a run's timeline bounded by its first and last sighting) touch only the
partitions of their range.

Layout: range partitions `events_pYYYYMMDDHH` of `store.partition_interval_hours` each,
created `store.partitions_ahead` intervals ahead of now, plus `events_default`, which
catches anything outside them (events from far in the past or future, rows from before
partitioning) so ingest never fails for want of a partition. Creating a partition moves the
default partition's rows of that range into it, in the same transaction.

Retention drops every partition whose upper bound is at or before the cutoff; the default
partition is trimmed by bounded batched deletes. SQLite has no partitions and keeps the
batched deletes for everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Column, Connection, Engine, MetaData, Table, text

from consumers.store.schema import Time

DEFAULT = "events_default"
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    start: datetime
    end: datetime
    name: str


def default_table() -> Table:
    """The default partition, for retention's batched deletes (id is unique in it)."""
    return Table(DEFAULT, MetaData(), Column("id", BigInteger), Column("TimeGenerated", Time))


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass('events')")
    ).scalar()
    return bool(kind == "p")


def partitions(conn: Connection) -> list[Partition]:
    """The range partitions of events, oldest first (the default partition excluded)."""
    conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
        )
    )
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            start, end = (datetime.fromisoformat(v).astimezone(UTC) for v in match.groups())
            found.append(Partition(start, end, name))
    return sorted(found)


def _floor(moment: datetime, hours: int) -> datetime:
    step = hours * 3600
    seconds = int(moment.timestamp()) // step * step
    return datetime.fromtimestamp(seconds, UTC)


def _create(conn: Connection, start: datetime, end: datetime) -> str:
    """One partition for [start, end): built beside the table, filled with the default
    partition's rows of that range, then attached (which indexes it like its siblings)."""
    name = f"events_p{start:%Y%m%d%H}"
    conn.execute(text(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)"))
    conn.execute(
        text(
            f'WITH moved AS (DELETE FROM {DEFAULT} WHERE "TimeGenerated" >= :start '
            f'AND "TimeGenerated" < :end RETURNING *) INSERT INTO {name} SELECT * FROM moved'
        ),
        {"start": start, "end": end},
    )
    conn.execute(
        text(
            f"ALTER TABLE events ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    return name


def ensure_partitions(
    engine: Engine, now: datetime, *, interval_hours: int, ahead: int
) -> list[str]:
    """Partitions from the current interval to `ahead` intervals past it; returns the names
    created. Idempotent, and safe with several replicas (they take turns on the table lock)."""
    created: list[str] = []
    horizon = _floor(now, interval_hours) + timedelta(hours=interval_hours * (ahead + 1))
    with engine.begin() as conn:
        if not is_partitioned(conn):
            return created
        # one replica at a time; ingest keeps writing (SHARE UPDATE EXCLUSIVE)
        conn.execute(text("LOCK TABLE events IN SHARE UPDATE EXCLUSIVE MODE"))
        existing = partitions(conn)
        start = _floor(now, interval_hours)
        if existing and existing[-1].end > start:
            start = existing[-1].end  # continue after the newest, even if the interval changed
        while start < horizon:
            end = _floor(start, interval_hours) + timedelta(hours=interval_hours)
            created.append(_create(conn, start, end))
            start = end
    return created


def drop_older_than(engine: Engine, cutoff: datetime) -> int:
    """Retention for the range partitions: drop each one wholly older than the cutoff.
    Returns the rows dropped, as the planner's estimate (counting them would read them).
    Dropping takes a short exclusive lock on events; a lock timeout keeps ingest from
    queueing behind a long query for it, and the next retention pass tries again."""
    rows = 0
    with engine.begin() as conn:
        if not is_partitioned(conn):
            return 0
        conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        for partition in partitions(conn):
            if partition.end <= cutoff:
                estimate = conn.execute(
                    text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
                    {"name": partition.name},
                ).scalar()
                conn.execute(text(f"DROP TABLE {partition.name}"))
                rows += max(int(estimate or 0), 0)
    return rows
