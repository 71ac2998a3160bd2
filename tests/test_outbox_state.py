"""One contract for the state port, held by its SQL implementation (on SQLite and, when it
answers, PostgreSQL) and by the in-memory one the unit tests use: the same calls give the
same answers, so a stage tested in memory decides the same on the store."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from consumers.model.notifications import NotificationGroup, NotificationRow, NotificationState
from consumers.model.silences import Silence
from consumers.outbox.state import OutboxState
from consumers.store import Store, open_store
from consumers.store.outbox_state import SqlOutboxState
from consumers.store.schema import notifications
from consumers.store.silences import add_silence
from tests.memory_state import MemoryState

NOW = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
S = NotificationState


def row(key: str, **values: Any) -> NotificationRow:
    base: NotificationRow = {
        "id": f"id-{key}",
        "dedup_key": key,
        "rule": "rule",
        "severity": 3,
        "fingerprint": "fp",
        "throttle_key": "tk",
        "receiver": "mail",
        "receiver_type": "email",
        "followup": False,
        "state": "pending",
        "attempts": 0,
        "run_id": key,
        "status": "Failed",
        "event_time": NOW,
        "alert": {},
        "created_at": NOW,
        "next_attempt_at": NOW,
        "reason": None,
        "kind": "alert",
        "group_key": None,
    }
    return {**base, **values}  # type: ignore[typeddict-item]


def exercise(state: OutboxState, sending: Callable[[str], None]) -> list[Any]:
    """Every port method, with answers that depend on what was written before."""
    seen: list[Any] = []
    seen.append([s.matchers for s in state.active_silences(NOW)])
    state.record_inhibition("outage", "ws-a", "fp-1", NOW + timedelta(minutes=10))
    state.record_inhibition("outage", "ws-a", "fp-2", NOW + timedelta(minutes=20))  # replaces
    seen.append(state.inhibition_source("outage", "ws-a", NOW + timedelta(minutes=15)))
    seen.append(state.inhibition_source("outage", "ws-a", NOW + timedelta(minutes=20)))
    seen.append(state.inhibition_source("outage", "ws-b", NOW))
    seen.append([state.insert(row("a")), state.insert(row("a")), state.is_recorded("a")])
    seen.append(state.is_recorded("b"))
    state.insert(row("g1", group_key="g", fingerprint="fp-g"))
    state.insert(row("g2", group_key="g", fingerprint="fp-x", state="repeat"))
    seen.append(
        [
            state.notified_in_group("g", "fp-g", NOW),
            state.notified_in_group("g", "fp-g", NOW + timedelta(seconds=1)),
            state.notified_in_group("g", "fp-x", NOW),  # only a repeat: not live
        ]
    )
    group = NotificationGroup("g", "mail", "rule", {"workspace": "ws-a"}, NOW, None)
    seen.append(state.group("g"))
    state.schedule_group(group)
    state.schedule_group(dataclasses.replace(group, next_flush_at=NOW + timedelta(minutes=5)))
    seen.append(state.group("g"))
    for i in range(3):
        state.insert(row(f"s{i}", receiver="hook", created_at=NOW + timedelta(seconds=i)))
    state.insert(row("s-old", receiver="hook", created_at=NOW - timedelta(minutes=1)))
    state.insert(row("s-storm", receiver="hook", state="storm"))
    seen.append([state.live_count("hook", NOW, 10), state.live_count("hook", NOW, 2)])
    seen.append(
        [
            state.is_throttled("rule", "tk", "mail", "new", NOW),
            state.is_throttled("rule", "tk", "mail", "g1", NOW),  # by "a"
            state.is_throttled("rule", "tk", "mail", "new", NOW + timedelta(seconds=1)),
            state.is_throttled("rule", "other", "mail", "new", NOW),
        ]
    )
    seen.append([state.is_followup("fp", "mail", "new"), state.is_followup("fp", "hook", "s0")])
    sending("id-s0")
    seen.append([state.hold("id-s0", S.SILENCED, "silence:x"), state.hold("id-s1", S.SILENCED, "")])
    seen.append(state.live_count("hook", NOW, 10))
    return seen


EXPECTED = [
    [("run_id=r1",)],
    "fp-2",
    None,
    None,
    [True, False, True],
    False,
    [True, False, False],
    None,
    NotificationGroup("g", "mail", "rule", {"workspace": "ws-a"}, NOW + timedelta(minutes=5), None),
    [3, 2],
    [True, True, False, False],
    [True, True],
    [True, False],
    2,
]


def test_the_in_memory_state() -> None:
    state = MemoryState()
    state.silences.extend(_silences())

    def sending(notification_id: str) -> None:
        for r in state.rows.values():
            if r["id"] == notification_id:
                r["state"] = S.SENDING.value

    assert exercise(state, sending) == EXPECTED


@contextmanager
def _sql_state(store: Store) -> Iterator[Callable[[], list[Any]]]:
    add_silence(store, ["run_id=r1"], duration_s=600, comment="", now=NOW - timedelta(minutes=1))
    add_silence(store, ["run_id=r2"], duration_s=30, comment="", now=NOW - timedelta(minutes=1))
    with store.engine.begin() as conn:
        state = SqlOutboxState(conn)

        def sending(notification_id: str) -> None:
            conn.execute(
                update(notifications)
                .where(notifications.c.id == notification_id)
                .values(state=S.SENDING.value)
            )

        yield lambda: exercise(state, sending)


def _silences() -> list[Silence]:
    """Matches the two the SQL tests add: one active at NOW, one ended before."""
    start = NOW - timedelta(minutes=1)
    return [
        Silence("x", ("run_id=r1",), start, start + timedelta(seconds=600), "", "", start),
        Silence("y", ("run_id=r2",), start, start + timedelta(seconds=30), "", "", start),
    ]


def test_the_sql_state_on_sqlite(store: Store) -> None:
    with _sql_state(store) as run:
        assert run() == EXPECTED


def test_the_sql_state_on_postgresql(pg_url: str) -> None:
    store = open_store(pg_url, migrate=True)
    try:
        with _sql_state(store) as run:
            assert run() == EXPECTED
    finally:
        store.dispose()


def test_sql_state_is_the_port() -> None:
    """mypy checks this assignment: SqlOutboxState implements OutboxState."""
    implementation: type[OutboxState] = SqlOutboxState
    assert implementation is SqlOutboxState
