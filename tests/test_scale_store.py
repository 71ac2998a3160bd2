"""The PostgreSQL side of scaling out: migrations (from empty, from the previous version,
several replicas at once, a newer schema refused), partitions ahead and retention by
dropping them, the hot queries' plans, the outbox claimed once across claimers, and NOTIFY
waking a listener. Each test gets its own database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, text

from consumers.model.alerts import Alert
from consumers.model.errors import SchemaVersionError
from consumers.model.events import RunStatusEvent
from consumers.outbox.recorder import recording
from consumers.store import Store, open_store
from consumers.store.engine import make_engine
from consumers.store.listen import OutboxListener
from consumers.store.migrate import _alembic_config, head_revision, revision
from consumers.store.outbox import Outbox
from consumers.store.partitions import is_partitioned, partitions
from consumers.store.queries import get_run

NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)


def ev(run: str, status: str, time: datetime, **fields: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {"RunId": run, "Status": status, "TimeGenerated": time, "ExperimentName": "e"} | fields
    )


def scalar(store: Store, query: str, **params: Any) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(text(query), params).scalar()


def upgrade_to(url: str, target: str) -> None:
    engine = make_engine(url)
    config = _alembic_config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, target)
    finally:
        engine.dispose()


def write_as_before(url: str, batch: list[RunStatusEvent]) -> None:
    """Events as an older version wrote them: the columns its schema has (today's writer
    would also write the columns added since, such as 0007_causes' cause)."""
    engine = make_engine(url)
    try:
        table = Table("events", MetaData(), autoload_with=engine)
        rows = [
            {k: v for k, v in event.__dict__.items() if k in table.c} | {"IngestedAt": NOW}
            for event in batch
        ]
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
    finally:
        engine.dispose()


def test_migrate_from_empty_partitions_events(fresh_pg: str) -> None:
    store = open_store(fresh_pg, migrate=True)
    try:
        assert revision(store) == head_revision()
        with store.engine.connect() as conn:
            assert is_partitioned(conn)
        created = store.ensure_partitions(NOW, interval_hours=24, ahead=2)
        assert created == ["events_p2026112300", "events_p2026112400", "events_p2026112500"]
        assert store.ensure_partitions(NOW, interval_hours=24, ahead=2) == []  # idempotent
        store.write_batch([ev("r1", "Running", NOW), ev("r1", "Failed", NOW + timedelta(days=1))])
        assert scalar(store, "SELECT count(*) FROM events_p2026112300") == 1
        assert scalar(store, "SELECT count(*) FROM events_p2026112400") == 1
        assert scalar(store, "SELECT count(*) FROM events_default") == 0
    finally:
        store.dispose()


def test_migrate_from_the_previous_version_keeps_every_event(fresh_pg: str) -> None:
    previous_head = ScriptDirectory.from_config(_alembic_config()).get_revision("0004_scale")
    assert previous_head is not None and isinstance(previous_head.down_revision, str)
    upgrade_to(fresh_pg, previous_head.down_revision)
    batch = [ev(f"r{i}", "Running", NOW - timedelta(days=i)) for i in range(5)]
    write_as_before(fresh_pg, batch)  # the store as the previous version left it
    with pytest.raises(SchemaVersionError, match="run `runwatch db upgrade`"):
        open_store(fresh_pg)  # an old schema is refused until migrated

    store = open_store(fresh_pg, migrate=True)
    try:
        assert scalar(store, "SELECT count(*) FROM events") == 5
        assert scalar(store, "SELECT count(*) FROM events_default") == 5  # no copy at migration
        store.ensure_partitions(NOW, interval_hours=24, ahead=1)
        # today's old row moved into today's partition; the older ones stay in the default
        assert scalar(store, "SELECT count(*) FROM events_p2026112300") == 1
        assert scalar(store, "SELECT count(*) FROM events_default") == 4
        # the natural key still holds across the move: a replay inserts nothing
        assert store.write_batch(batch).inserted == 0
        new = store.write_batch([ev("r9", "Failed", NOW)])
        assert new.inserted == 1
        ids = scalar(store, "SELECT count(DISTINCT id) FROM events")
        assert ids == 6  # ids continue from the old table's sequence
    finally:
        store.dispose()


def test_replicas_migrating_at_once_take_turns(fresh_pg: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            open_store(fresh_pg, migrate=True).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = open_store(fresh_pg)
    assert revision(store) == head_revision()
    store.dispose()


def test_migrating_a_newer_schema_is_refused_untouched(fresh_pg: str) -> None:
    store = open_store(fresh_pg, migrate=True)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    store.dispose()
    with pytest.raises(SchemaVersionError, match="newer than this build") as caught:
        open_store(fresh_pg, migrate=True)
    assert "upgrade runwatch" in str(caught.value)


def test_retention_drops_whole_partitions(fresh_pg: str) -> None:
    store = open_store(fresh_pg, migrate=True)
    try:
        start = NOW - timedelta(days=10)
        store.ensure_partitions(start, interval_hours=24, ahead=12)
        old = [ev(f"old{i}", "Completed", start + timedelta(hours=i)) for i in range(30)]
        recent = [ev(f"new{i}", "Completed", NOW - timedelta(hours=i)) for i in range(5)]
        ancient = [ev("ancient", "Completed", NOW - timedelta(days=400))]  # default partition
        store.write_batch(old + recent + ancient)
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE events"))
        cutoff = NOW - timedelta(days=5)
        deleted = store.delete_older_than(cutoff, batch=10)
        with store.engine.begin() as conn:
            left = [p.name for p in partitions(conn)]
        assert all(p >= "events_p20261118" for p in left), left  # wholly older: dropped
        assert "events_p2026111300" not in left
        assert scalar(store, "SELECT count(*) FROM events") == 5
        assert scalar(store, "SELECT count(*) FROM events_default") == 0
        assert deleted >= 31  # 30 dropped with their partitions + the default's one
    finally:
        store.dispose()


def _plan(store: Store, query: str, **params: Any) -> str:
    with store.engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        rows = conn.execute(text(f"EXPLAIN {query}"), params).scalars()
        return "\n".join(rows)


def test_hot_queries_use_indexes_and_prune_partitions(fresh_pg: str) -> None:
    store = open_store(fresh_pg, migrate=True)
    try:
        store.ensure_partitions(NOW - timedelta(days=5), interval_hours=24, ahead=8)
        store.write_batch(
            [ev(f"r{i}", "Failed", NOW - timedelta(hours=i * 7)) for i in range(20)]
            + [ev("r0", "Running", NOW - timedelta(minutes=5))]
        )
        detail = get_run(store, "r0")
        assert detail is not None and [e.status for e in detail.timeline] == [
            "Running",
            "Failed",
        ]
        run_timeline = _plan(
            store,
            'SELECT * FROM events WHERE "RunId" = :r AND "TimeGenerated" BETWEEN :a AND :b',
            r="r0",
            a=NOW - timedelta(minutes=5),
            b=NOW,
        )
        assert "events_p2026112300" in run_timeline
        assert "events_p2026112200" not in run_timeline  # pruned
        assert "Seq Scan" not in run_timeline
        window = _plan(
            store,
            'SELECT count(*) FROM events WHERE "Status" = :s AND "TimeGenerated" >= :a',
            s="Failed",
            a=NOW - timedelta(hours=1),
        )
        assert "Seq Scan" not in window and "status_time" in window.lower().replace('"', "")
        assert "events_p2026112200" not in window
        due = _plan(
            store,
            "SELECT id FROM notifications WHERE state = 'pending' AND next_attempt_at <= now() "
            "ORDER BY next_attempt_at LIMIT 200 FOR UPDATE SKIP LOCKED",
        )
        assert "ix_notifications_due" in due
    finally:
        store.dispose()


def _alert(run: str) -> Alert:
    event = ev(run, "Failed", NOW)
    return Alert(
        rule="run-failed",
        severity=2,
        receivers=("ops",),
        throttle_key=f"RunId={run}",
        throttle_s=0.0,
        event=event,
    )


def test_claimers_never_share_a_notification_and_notify_wakes_listeners(
    fresh_pg: str,
) -> None:
    store = open_store(fresh_pg, migrate=True)
    woken = threading.Event()
    stop = threading.Event()
    listener = OutboxListener(store.engine, woken.set)
    thread = listener.start(stop)
    try:
        assert listener.connected.wait(10)
        alerts = [_alert(f"r{i}") for i in range(300)]
        written = store.write_batch(
            [a.event for a in alerts], record=recording(alerts, {"ops": "email"}), now=NOW
        )
        assert written.notifications == 300
        assert woken.wait(5), "NOTIFY did not reach the listener"

        outbox = Outbox(store)
        claimed: list[list[str]] = [[] for _ in range(4)]

        def claim(slot: int) -> None:
            while batch := outbox.claim(NOW + timedelta(seconds=1), 7, 60):
                claimed[slot].extend(n.id for n in batch)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [i for ids in claimed for i in ids]
        assert len(every) == 300 and len(set(every)) == 300
        assert sum(1 for ids in claimed if ids) > 1  # the work was actually shared
    finally:
        stop.set()
        thread.join(5)
        store.dispose()
