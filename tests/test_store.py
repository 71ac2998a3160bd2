"""`consumers.store`: schema versions, idempotent writes, the status tie-break and bounded
retention, against SQLite and (when it answers) PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from consumers.model.errors import SchemaVersionError
from consumers.model.events import RunStatusEvent
from consumers.store import Store, open_store
from consumers.store.engine import make_engine
from consumers.store.migrate import head_revision, revision
from consumers.store.schema import metadata
from consumers.store.writer import DeadLetter

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=40)
CUTOFF = NOW - timedelta(days=30)
TABLES = (*(t.name for t in metadata.sorted_tables), "alembic_version")


def ev(run: str, status: str, time: datetime, **fields: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {"RunId": run, "Status": status, "TimeGenerated": time} | fields
    )


def _drop_everything(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in TABLES:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with nothing in it: a new SQLite file, or the module's PostgreSQL database
    emptied (it is shared by the module's tests)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    _drop_everything(url)
    return url


@pytest.fixture
def db(empty_url: str) -> Iterator[Store]:
    store = open_store(empty_url, migrate=True)
    yield store
    store.dispose()


def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def count(store: Store, table: str) -> int:
    return int(rows(store, f"SELECT count(*) FROM {table}")[0][0])


def test_migrate_from_empty_reaches_head(empty_url: str) -> None:
    store = open_store(empty_url, migrate=True)
    try:
        assert revision(store) == head_revision()
        for table in ("events", "runs", "dead_letters"):
            assert count(store, table) == 0
    finally:
        store.dispose()
    # migrating again is a no-op, and a migrated store opens without migrating
    again = open_store(empty_url, migrate=True)
    again.dispose()
    opened = open_store(empty_url)
    try:
        assert revision(opened) == head_revision()
    finally:
        opened.dispose()


def test_an_empty_database_is_refused_without_migrate(empty_url: str) -> None:
    with pytest.raises(SchemaVersionError, match="no runwatch schema") as caught:
        open_store(empty_url)
    assert "run `runwatch db upgrade`" in str(caught.value)
    assert not caught.value.retriable


def test_a_newer_schema_is_refused(empty_url: str) -> None:
    store = open_store(empty_url, migrate=True)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    finally:
        store.dispose()
    with pytest.raises(SchemaVersionError, match="newer than this build") as caught:
        open_store(empty_url)
    assert "9999_from_the_future" in str(caught.value)
    assert head_revision() in str(caught.value)


def test_retention_deletes_in_bounded_batches(db: Store) -> None:
    old_events = [ev(f"old-{i}", "Completed", OLD + timedelta(seconds=i)) for i in range(45)]
    old_events += [
        ev("stuck", "Queued", OLD),
        ev("stuck", "Running", OLD + timedelta(seconds=5)),
        ev("old-failed", "Failed", OLD + timedelta(minutes=1)),
        ev("old-canceled", "Canceled", OLD + timedelta(minutes=2)),
        ev("spans", "Running", OLD),  # old event, but the run's LastSeen is recent
    ]
    assert len(old_events) == 50
    new_events = [
        ev("spans", "Completed", NOW),
        ev("new-1", "Running", NOW),
        ev("new-2", "Failed", NOW - timedelta(days=29)),
    ]
    db.write_batch([*old_events, *new_events])
    letters = [DeadLetter("runs", 0, i, "not_json", "bad", None, b"x") for i in range(3)]
    db.write_batch([], letters, now=OLD)
    db.write_batch([], [DeadLetter("runs", 0, 99, "not_json", "bad", None, b"y")], now=NOW)

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        deleted = db.delete_older_than(CUTOFF, batch=7)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)

    assert deleted >= 50
    # 50 old events in batches of 7: 8 rounds (the last one short), three tables each
    assert len(statements) == 8 * 3
    assert all("LIMIT" in s.upper() for s in statements)
    assert rows(db, 'SELECT "RunId", "Status" FROM events ORDER BY "RunId"') == [
        ("new-1", "Running"),
        ("new-2", "Failed"),
        ("spans", "Completed"),
    ]
    # terminal runs last seen before the cutoff go; a run still Running is kept however old
    assert rows(db, 'SELECT "RunId", "Status" FROM runs ORDER BY "RunId"') == [
        ("new-1", "Running"),
        ("new-2", "Failed"),
        ("spans", "Completed"),
        ("stuck", "Running"),
    ]
    assert rows(db, 'SELECT "SourceOffset" FROM dead_letters') == [(99,)]
    assert db.delete_older_than(CUTOFF, batch=7) == 0


def test_writing_the_same_batch_twice_stores_each_event_once(db: Store) -> None:
    batch = [
        ev("r1", "Queued", NOW - timedelta(minutes=3), ExperimentName="mnist"),
        ev("r1", "Running", NOW - timedelta(minutes=2), ExperimentName="mnist"),
        ev("r1", "Completed", NOW - timedelta(minutes=1), ExperimentName="mnist"),
        ev("r2", "Failed", NOW, Message="oom", Tags={"quality": "bad"}),
    ]
    first = db.write_batch(batch)
    assert (first.inserted, first.duplicates, first.runs) == (4, 0, 2)
    second = db.write_batch(batch)
    assert (second.inserted, second.duplicates, second.runs) == (0, 4, 2)
    # one of them again in a mixed batch, with a new one
    third = db.write_batch([batch[3], ev("r3", "Queued", NOW)])
    assert (third.inserted, third.duplicates) == (1, 1)
    assert count(db, "events") == 5
    assert rows(db, 'SELECT "RunId", "Status" FROM runs ORDER BY "RunId"') == [
        ("r1", "Completed"),
        ("r2", "Failed"),
        ("r3", "Queued"),
    ]


def test_same_timestamp_failed_beats_running_in_one_batch(db: Store) -> None:
    at = NOW - timedelta(seconds=10)
    db.write_batch(
        [
            ev("tie", "Failed", at, Message="CUDA out of memory", Level="Error"),
            ev("tie", "Running", at, Message="started"),
        ]
    )
    assert rows(db, """SELECT "Status", "Message" FROM runs WHERE "RunId" = 'tie'""") == [
        ("Failed", "CUDA out of memory")
    ]
    assert count(db, "events") == 2


def test_same_timestamp_tie_break_across_batches(db: Store) -> None:
    at = NOW - timedelta(seconds=10)
    db.write_batch([ev("a", "Failed", at)])
    db.write_batch([ev("a", "Running", at)])  # arrives later, same time: still Failed
    db.write_batch([ev("b", "Running", at)])
    db.write_batch([ev("b", "Failed", at)])
    assert rows(db, 'SELECT "RunId", "Status" FROM runs ORDER BY "RunId"') == [
        ("a", "Failed"),
        ("b", "Failed"),
    ]


def test_dead_letters_are_idempotent_on_their_source(db: Store) -> None:
    letter = DeadLetter("runs", 2, 41, "not_json", "Expecting value", b"key", b"{oops")
    assert db.write_batch([], [letter]).dead_letters == 1
    assert db.write_batch([], [letter]).dead_letters == 0
    # same offset on another partition or topic is another message
    other_partition = DeadLetter("runs", 1, 41, "not_json", "Expecting value", None, b"{")
    other_topic = DeadLetter("other", 2, 41, "schema", "RunId missing", None, b"{}")
    redelivered = DeadLetter("runs", 2, 41, "schema", "a different reason", None, b"{}")
    result = db.write_batch([], [other_partition, other_topic, redelivered])
    assert result.dead_letters == 2
    assert rows(
        db,
        'SELECT "SourceTopic", "SourcePartition", "SourceOffset", "Reason", "Payload" '
        'FROM dead_letters ORDER BY "SourceTopic", "SourcePartition"',
    ) == [
        ("other", 2, 41, "schema", b"{}"),
        ("runs", 1, 41, "not_json", b"{"),
        ("runs", 2, 41, "not_json", b"{oops"),
    ]
