"""The outbox rows of a batch written set-based (consumers/store/outbox_batch.py: COPY staging
and one INSERT ... SELECT on PostgreSQL, multi-row INSERT on SQLite) in the batch's
transaction: the same rows, states, follow-ups and throttles as recording row by row, with
duplicates within and across batches, replays, noise control's reads of rows held in the
batch, a rollback, and two replicas recording the same notifications at once."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from consumers.config.noise import NoiseSettings
from consumers.model.alerts import Alert
from consumers.model.errors import StoreError
from consumers.model.events import RunStatusEvent
from consumers.noise.policy import NoisePolicy
from consumers.outbox.recorder import Recorder, recording
from consumers.store import Store, open_store
from consumers.store.outbox_state import SqlOutboxState
from consumers.store.schema import notification_groups
from consumers.store.schema import notifications as n
from tests.test_store_batches import _drop, at_once, rows

# Two seconds before a minute's end: the batches straddle two storm windows, and the replay
# must not record a storm summary the first pass did not (it did, on both recording paths,
# while a duplicate could open a window's summary).
NOW = datetime.now(UTC).replace(second=58, microsecond=0)
KINDS = {"mail": "email", "hook": "webhook"}
COLUMNS = [c for c in n.columns if c.name != "id"]  # the id is a fresh uuid per row
NAMES = [c.name for c in COLUMNS]
NOISE: dict[str, dict[str, Any] | None] = {
    "none": None,
    "grouped": {"defaults": {"group_by": ["workspace"]}},
    "storm": {"storm": {"max_per_minute": 120}},  # reached in the second of the overlapping batches
}


def failed(run: str, seconds: float, workspace: str = "ws-a") -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "RunId": run,
            "Status": "Failed",
            "TimeGenerated": NOW - timedelta(minutes=5) + timedelta(seconds=seconds),
            "WorkspaceName": workspace,
            "ExperimentName": "train",
        }
    )


def many_alerts() -> list[Alert]:
    """Throttled repeats of a run (later ones `throttled`, follow-ups), a rule whose alerts
    share one fingerprint (follow-ups, never throttled), an unknown receiver (dead), stale
    ones (suppressed: they neither throttle nor thread) and exact duplicates."""
    out: list[Alert] = []
    for i in range(160):
        run = f"run-{i:03d}"
        event = failed(run, i, workspace=f"ws-{i % 3}")
        receivers = ("mail", "hook", "nowhere") if i % 9 == 0 else ("mail", "hook")
        throttled = dict(throttle_key=f"RunId={run}", throttle_s=3600.0)
        out.append(
            Alert(
                rule="run-failed", receivers=receivers, event=event, stale=i % 7 == 3, **throttled
            )
        )
        if i % 4 == 0:  # the run fails again: throttled, threaded under the first
            again = failed(run, i + 0.5, workspace=f"ws-{i % 3}")
            out.append(Alert(rule="run-failed", receivers=("mail",), event=again, **throttled))
        if i % 5 == 0:  # one fingerprint for all of them
            out.append(Alert(rule="flaky", receivers=("hook",), throttle_key="ws", event=event))
        if i % 6 == 0:  # the same alert twice in the batch (a duplicated message)
            out.append(out[-1])
    return out


def _policy(noise: str) -> NoisePolicy | None:
    settings = NOISE[noise]
    return None if settings is None else NoisePolicy(NoiseSettings.model_validate(settings))


def batched(store: Store, batches: Sequence[Sequence[Alert]], noise: str) -> list[int]:
    """The ingest path: each batch's events and notifications in one write_batch."""
    policy = _policy(noise)
    created = []
    for index, alerts in enumerate(batches):
        record = recording(alerts, KINDS, policy)
        at = NOW + timedelta(seconds=index)
        result = store.write_batch([a.event for a in alerts], record=record, now=at)
        created.append(result.notifications)
    return created


def row_by_row(store: Store, batches: Sequence[Sequence[Alert]], noise: str) -> list[int]:
    """What recording did before: each row decided and inserted through SqlOutboxState."""
    recorder = Recorder(KINDS, _policy(noise))
    created = []
    for index, alerts in enumerate(batches):
        with store.write_lock, store.engine.begin() as conn:
            state = SqlOutboxState(conn)
            created.append(recorder.record(state, alerts, NOW + timedelta(seconds=index)))
    return created


def outbox(store: Store) -> list[tuple[Any, ...]]:
    """The rows (and the digest groups noise control scheduled for them)."""
    groups = rows(store, select(notification_groups).order_by(notification_groups.c.key))
    return [*rows(store, select(*COLUMNS).order_by(n.c.dedup_key)), *groups]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        _drop(url)
    store = open_store(url, migrate=True)
    yield store
    store.dispose()


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'reference.db'}", migrate=True)
    yield store
    store.dispose()


@pytest.mark.parametrize("noise", sorted(NOISE))
def test_one_batch_of_many_notifications_records_what_row_by_row_records(
    db: Store, reference: Store, noise: str
) -> None:
    alerts = many_alerts()
    created = batched(db, [alerts], noise)
    assert created == row_by_row(reference, [alerts], noise)
    got = outbox(db)
    assert got == outbox(reference)
    got = rows(db, select(*COLUMNS).order_by(n.c.dedup_key))
    assert created == [sum(1 for row in got if row[NAMES.index("kind")] == "alert")]
    states = {row[NAMES.index("state")] for row in got}
    if noise == "none":
        assert states == {"pending", "throttled", "suppressed", "dead"}
        assert any(row[NAMES.index("followup")] for row in got)
    if noise == "storm":
        assert {"storm"} <= states


@pytest.mark.parametrize("noise", sorted(NOISE))
def test_duplicates_across_batches_and_a_recut_replay_record_each_notification_once(
    db: Store, reference: Store, noise: str
) -> None:
    """Batches that overlap (a redelivery cut differently after a crash), then every batch
    again: nothing new, and the rows row-by-row recording gives."""
    alerts = many_alerts()
    batches = [alerts[start : start + 80] for start in range(0, len(alerts), 60)]
    created = batched(db, batches, noise)
    assert created == row_by_row(reference, batches, noise)
    assert outbox(db) == outbox(reference)
    stored = outbox(db)
    assert batched(db, batches, noise) == [0] * len(batches)
    assert outbox(db) == stored


def test_a_batch_that_rolls_back_leaves_no_notification_and_its_replay_records_them(
    db: Store,
) -> None:
    """Exactly once: the rows commit with the batch's events or not at all (the recorder's
    rows are flushed inside the transaction, before what failed after them)."""
    alerts = many_alerts()[:40]
    inner = recording(alerts, KINDS)
    assert inner is not None

    def record_then_fail(conn: Any, now: datetime) -> int:
        assert inner(conn, now) > 0
        raise RuntimeError("the process died before the commit")

    with pytest.raises(RuntimeError):
        db.write_batch([a.event for a in alerts], record=record_then_fail, now=NOW)
    assert rows(db, "SELECT count(*) FROM notifications") == [(0,)]
    assert rows(db, "SELECT count(*) FROM events") == [(0,)]
    [created] = batched(db, [alerts], "none")
    assert created > 0
    assert rows(db, "SELECT count(*) FROM notifications") == [(created,)]


def _write(store: Store, alerts: list[Alert]) -> Any:
    return store.write_batch([a.event for a in alerts], record=recording(alerts, KINDS), now=NOW)


def test_replicas_recording_the_same_notifications_at_once_neither_deadlock_nor_double(
    pg_url: str,
) -> None:
    """A rebalance hands a partition over mid-batch: two replicas write the same events
    and record the same notifications at once, in opposite orders. The rows go in
    dedup-key order, so one waits for the other instead of both for each other (a deadlock
    would fail a batch here), and the second inserts none of them."""
    _drop(pg_url)
    open_store(pg_url, migrate=True).dispose()
    replicas = [open_store(pg_url), open_store(pg_url)]
    try:
        total = 0
        for round_ in range(4):
            alerts = [
                Alert(
                    rule=f"round-{round_}",
                    receivers=("mail", "hook"),
                    throttle_key=f"RunId=r{i}",
                    event=failed(f"r{round_}-{i:03d}", i),
                )
                for i in range(300)
            ]
            random.Random(round_).shuffle(alerts)
            results = at_once(
                [partial(_write, replicas[0], alerts), partial(_write, replicas[1], alerts[::-1])]
            )
            assert not any(isinstance(result, StoreError) for result in results), results
            assert sum(result.notifications for result in results) == 2 * len(alerts)
            total += 2 * len(alerts)
            assert rows(replicas[0], "SELECT count(*) FROM notifications") == [(total,)]
        keys = rows(replicas[0], "SELECT count(DISTINCT dedup_key) FROM notifications")
        assert keys == [(total,)]
    finally:
        for store in replicas:
            store.dispose()
