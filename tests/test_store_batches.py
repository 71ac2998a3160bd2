"""The batch write (consumers/store/writer.py; COPY staging on PostgreSQL,
consumers/store/staging.py): duplicates and out-of-order events within one batch and across
batches give the rows one in-order write gives, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Select, select, text

from consumers.model.errors import StoreError
from consumers.model.events import RunStatusEvent
from consumers.store import Store, open_store
from consumers.store.engine import make_engine
from consumers.store.schema import events, metadata, runs

NOW = datetime.now(UTC).replace(microsecond=0)
RUN_COLUMNS = list(runs.columns)
EVENT_COLUMNS = [c for c in events.columns if c.name not in ("id", "IngestedAt")]


def ev(run: str, status: str, seconds: float, **fields: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {"RunId": run, "Status": status, "TimeGenerated": NOW + timedelta(seconds=seconds)} | fields
    )


def lifecycle(run: str, start: float, *, fails: bool, parent: str | None = None) -> list[Any]:
    end = "Failed" if fails else "Completed"
    return [
        ev(run, "Queued", start, ExperimentName="exp", ParentRunId=parent),
        ev(run, "Running", start + 1, Tags={"step": "1"}),
        ev(run, "Running", start + 2, Tags={"step": "2"}, Message="epoch 2"),
        ev(run, end, start + 3, Message=f"{run} ended", Level="Error" if fails else None),
        ev(run, "Finalizing", start + 3),  # same time, lower rank: never wins
    ]


def _drop(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in (*(t.name for t in metadata.sorted_tables), "alembic_version"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg: str = request.getfixturevalue("pg_url")
    _drop(pg)
    return pg


@pytest.fixture
def db(url: str) -> Iterator[Store]:
    store = open_store(url, migrate=True)
    yield store
    store.dispose()


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[Store]:
    """The same events written once, in order, one run per batch: what every other order
    and split must give."""
    store = open_store(f"sqlite:///{tmp_path / 'reference.db'}", migrate=True)
    yield store
    store.dispose()


def rows(store: Store, query: str | Select[Any]) -> list[tuple[Any, ...]]:
    """Through the tables' types (times and JSON read the same on both databases)."""
    statement = text(query) if isinstance(query, str) else query
    with store.engine.connect() as conn:
        return [tuple(_plain(v) for v in row) for row in conn.execute(statement)]


def _plain(value: Any) -> Any:
    """Times compared as UTC instants (SQLite returns them naive), JSON as its value."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def state(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    e = events.c
    return (
        rows(store, select(*RUN_COLUMNS).order_by(runs.c.RunId)),
        rows(store, select(*EVENT_COLUMNS).order_by(e.RunId, e.TimeGenerated, e.Status)),
    )


def all_events() -> list[RunStatusEvent]:
    out: list[RunStatusEvent] = []
    for i in range(40):
        out += lifecycle(
            f"run-{i:02d}", i * 0.5, fails=i % 3 == 0, parent="root" if i % 2 else None
        )
    return out


def test_duplicates_and_disorder_within_one_batch(db: Store, reference: Store) -> None:
    events = all_events()
    for run in sorted({e.RunId for e in events}):
        reference.write_batch([e for e in events if e.RunId == run])
    shuffled = events + events[::3]  # every third event twice
    random.Random(1).shuffle(shuffled)
    result = db.write_batch(shuffled)
    assert (result.inserted, result.duplicates, result.runs) == (len(events), len(events[::3]), 40)
    assert state(db) == state(reference)
    r = runs.c
    failed = rows(db, select(r.Status, r.Message, r.EndTime).where(r.RunId == "run-00"))
    assert failed == [("Failed", "run-00 ended", NOW + timedelta(seconds=3))]


def test_duplicates_and_disorder_across_batches(db: Store, reference: Store) -> None:
    events = all_events()
    reference.write_batch(events)
    rng = random.Random(2)
    for round_ in range(3):  # the whole stream three times (redeliveries), each reshuffled
        shuffled = list(events)
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(shuffled)), 6))
        inserted = 0
        for start, end in zip([0, *cuts], [*cuts, len(shuffled)], strict=True):
            result = db.write_batch(shuffled[start:end])
            assert result.inserted + result.duplicates == end - start
            inserted += result.inserted
        assert inserted == (len(events) if round_ == 0 else 0)
        assert state(db) == state(reference)


def test_late_earlier_events_never_move_a_run_back(db: Store) -> None:
    db.write_batch([ev("late", "Failed", 10, Message="oom"), ev("late", "Running", 5)])
    db.write_batch([ev("late", "Queued", 1, ExperimentName="exp"), ev("late", "Running", 2)])
    r = runs.c
    query = select(r.Status, r.Message, r.FirstSeen, r.LastSeen, r.StartTime, r.EndTime)
    assert rows(db, query.add_columns(r.ExperimentName)) == [
        (
            "Failed",
            "oom",
            NOW + timedelta(seconds=1),
            NOW + timedelta(seconds=10),
            NOW + timedelta(seconds=2),
            NOW + timedelta(seconds=10),
            "exp",
        )
    ]


def test_a_batch_the_database_refuses_leaves_the_next_one_whole(db: Store) -> None:
    """A value PostgreSQL cannot store (a NUL in a text) fails its batch as bad data, not as
    an outage; the session's staged rows go with the rollback, and the next batch on the
    same connection stores exactly its own rows."""
    good = [ev("ok", "Queued", 1), ev("ok", "Running", 2)]
    bad = [*good, ev("nul", "Failed", 3, Message="a\x00b")]
    if db.engine.dialect.name == "postgresql":
        with pytest.raises(StoreError) as caught:
            db.write_batch(bad)
        assert not caught.value.retriable
        assert rows(db, "SELECT count(*) FROM events") == [(0,)]
        assert rows(db, "SELECT count(*) FROM runs") == [(0,)]
    else:  # SQLite keeps a NUL
        db.write_batch(bad)
    result = db.write_batch([*good, ev("next", "Completed", 4)])
    assert result.runs == 2
    stored = rows(db, 'SELECT "RunId", "Status" FROM runs ORDER BY "RunId"')
    assert [row for row in stored if row[0] != "nul"] == [("next", "Completed"), ("ok", "Running")]


def test_runs_updates_between_events_keep_topic_order(db: Store) -> None:
    """A run update between two slices of a batch: each slice's run rows are upserted in
    turn, so the update lands between them (here: the later event's tags replace it)."""
    from consumers.model.updates import RunUpdate

    def update(run: str) -> RunUpdate:
        at = NOW + timedelta(seconds=2)
        return RunUpdate.model_validate({"RunId": run, "TimeGenerated": at, "SetTags": {"o": "a"}})

    batch = [
        *(ev(run, "Running", 1, Tags={"step": "1"}) for run in ("between", "after")),
        *(ev(run, "Completed", 3, Tags={"done": "y"}) for run in ("between", "after")),
    ]
    result = db.write_batch(batch, updates=[(2, update("between")), (4, update("after"))])
    assert result.updates == 2
    r = runs.c
    assert rows(db, select(r.RunId, r.Status, r.Tags, r.UpdatedTime).order_by(r.RunId)) == [
        ("after", "Completed", {"done": "y", "o": "a"}, NOW + timedelta(seconds=2)),
        ("between", "Completed", {"done": "y"}, NOW + timedelta(seconds=2)),
    ]


def at_once(writes: list[Callable[[], Any]]) -> list[Any]:
    """Each write runs in its own thread, all starting together: the results, or the
    StoreError each raised."""
    barrier = threading.Barrier(len(writes))
    results: list[Any] = [None] * len(writes)

    def write(index: int) -> None:
        barrier.wait()
        try:
            results[index] = writes[index]()
        except StoreError as exc:
            results[index] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(writes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_replicas_writing_the_same_events_in_opposite_orders_never_deadlock(
    pg_url: str,
) -> None:
    """Two replicas storing the same new events at once (a rebalance hands a partition over
    mid-batch; an envelope carries runs of two trees): each takes the unique index's locks
    in natural-key order and the runs' in RunId order, so one waits for the other instead
    of both waiting for each other (a deadlock would fail a batch here: no retry)."""
    _drop(pg_url)
    open_store(pg_url, migrate=True).dispose()
    replicas = [open_store(pg_url), open_store(pg_url)]
    try:
        for round_ in range(4):
            events = [
                ev(f"r{round_}-{i:03d}", status, i % 50 + step)
                for i in range(300)
                for step, status in enumerate(("Queued", "Running", "Completed"))
            ]
            random.Random(round_).shuffle(events)
            results = at_once(
                [
                    partial(replicas[0].write_batch, events),
                    partial(replicas[1].write_batch, events[::-1]),
                ]
            )
            assert not any(isinstance(result, StoreError) for result in results), results
            assert sum(result.inserted for result in results) == len(events)
        assert rows(replicas[0], 'SELECT count(*), count(DISTINCT "RunId") FROM events') == [
            (4 * 900, 4 * 300)
        ]
    finally:
        for store in replicas:
            store.dispose()


# Under `python -OO` (the image's PYTHONOPTIMIZE=2) an assert is gone: the check that
# SQLAlchemy names a multi-row INSERT's binds <column>_m<row>, which the writer's column
# order relies on, must still stop a statement that does not.
_BINDS_CHECK = """
from sqlalchemy import bindparam, create_engine
from consumers.store import writer
from consumers.store.schema import events

assert not __debug__
def build(conn, count):
    return events.insert().values(RunId=bindparam("x"))


with create_engine("sqlite://").connect() as conn:
    try:
        writer._raw(conn, "odd", build, events, 1)
    except RuntimeError as exc:
        print("refused:", exc)
"""


def test_the_bind_name_check_holds_under_python_oo() -> None:
    done = subprocess.run(
        [sys.executable, "-OO", "-c", _BINDS_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: unexpected bind names for odd"), done.stdout


def test_times_are_stored_as_the_instants_they_name_whatever_their_zone(db: Store) -> None:
    """Times go to both stores as text formatted from their fields (consumers/store/timetext
    .py): a time in another zone is converted first, and whole seconds keep their six zeros
    (SQLite compares the text)."""
    wire = f'{{"TimeGenerated": "{NOW.isoformat()[:19]}Z", "RunId": "zones", "Status": "Queued"}}'
    parsed = RunStatusEvent.model_validate_json(wire)  # pydantic-core's own UTC tzinfo
    assert parsed.TimeGenerated.tzinfo is not UTC and parsed.TimeGenerated.tzinfo is not None
    local = (NOW + timedelta(seconds=1, microseconds=5)).astimezone(timezone(timedelta(hours=2)))
    batch = [
        parsed,
        # model_construct: validation converts to UTC, but the writer must not rely on it
        RunStatusEvent.model_construct(
            **{**ev("zones", "Running", 1).__dict__, "TimeGenerated": local}
        ),
        ev("zones", "Completed", 2),
    ]
    db.write_batch(batch)
    e, r = events.c, runs.c
    stored = rows(db, select(e.Status, e.TimeGenerated).order_by(e.TimeGenerated))
    assert stored == [
        ("Queued", NOW),
        ("Running", NOW + timedelta(seconds=1, microseconds=5)),
        ("Completed", NOW + timedelta(seconds=2)),
    ]
    window = select(e.Status).where(e.TimeGenerated > NOW + timedelta(seconds=1))
    assert rows(db, window) == [("Running",), ("Completed",)]
    run = rows(db, select(r.FirstSeen, r.StartTime, r.EndTime, r.StatusTime))
    assert run == [
        (NOW, NOW + timedelta(seconds=1, microseconds=5), *[NOW + timedelta(seconds=2)] * 2)
    ]
