"""Rule warm-up from the window snapshot (consumers/store/rule_windows.py): on real SQLite
and PostgreSQL, a restart, a takeover and a reload give the same window counts, and raise
the same notifications, as a replica that never stopped; the counts equal a full replay of
the window; changed rules are replayed, not loaded; damaged rows are replayed (logged)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, insert, update

from consumers.model.events import RunStatusEvent
from consumers.rules.engine import RuleSet
from consumers.rules.evaluation import Evaluation
from consumers.rules.kinds import _Flatline, _Threshold
from consumers.service.scheduler import Scheduler
from consumers.store import Store, open_store
from consumers.store.feed import events_between
from consumers.store.schema import events, rule_feed, rule_windows
from tests.conftest import _throwaway_pg
from tests.rulekit import KINDS, T0, Clock, SwitchLease, event, notes, rules

RULES = """
rules:
  - name: fails
    when: {status: [Failed]}
    threshold: {value: 4, window: 15m, every: 1m, group_by: [ExperimentName], resolve_after: 2}
    notify: [oncall, chat]
  - name: ratio
    when: {status: [Failed]}
    threshold:
      measure: ratio
      of: {status: [Completed, Failed]}
      value: 0.5
      op: ">"
      min_events: 3
      window: 30m
      every: 1m
      group_by: [WorkspaceName, tags.team]
      breaches: 2
      periods: 3
    notify: [oncall]
  - name: quiet
    when: {status: [Completed]}
    threshold: {value: 2, op: "<", window: 10m, every: 1m}
    notify: [oncall]
  - name: silent
    when: {status: [Completed], experiment: e0}
    flatline: {window: 12m, every: 1m, group_by: [WorkspaceName]}
    notify: [oncall]
"""


BACKENDS = ["sqlite", "postgresql"]


def _open(backend: str, tmp_path: Path, name: str, stack: list[Any]) -> Store:
    if backend == "sqlite":
        return open_store(f"sqlite:///{tmp_path / name}.db", migrate=True)
    database = _throwaway_pg("runwatch_w")
    stack.append(database)
    return open_store(database.__enter__(), migrate=True)


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Store]]:
    """Two empty stores of one backend: one for a replica that never stops, one for the
    replicas that restart, take over and reload."""
    stack: list[Any] = []
    opened = [_open(request.param, tmp_path, name, stack) for name in ("a", "b")]
    yield opened
    for store in opened:
        store.dispose()
    for database in stack:
        database.__exit__(None, None, None)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    stack: list[Any] = []
    store = _open(request.param, tmp_path, "one", stack)
    yield store
    store.dispose()
    for database in stack:
        database.__exit__(None, None, None)


def make(
    store: Store, clock: Clock, text: str = RULES, lease: Any = None, budget: int = 1 << 20
) -> Scheduler:
    ruleset = RuleSet(rules(text))
    return Scheduler(
        store,
        lambda: ruleset,
        lease if lease is not None else SwitchLease(),
        receiver_kinds=KINDS,
        resolved_receivers=frozenset({"chat"}),
        clock=clock,
        snapshot_budget=budget,
    )


def history(seed: int, minutes: int) -> list[list[RunStatusEvent]]:
    """Per minute, the events stored in it: random statuses, groups and tags, most on time,
    some a few minutes late, a few later than the shortest window."""
    rng = random.Random(seed)
    batches: list[list[RunStatusEvent]] = []
    n = 0
    for minute in range(minutes):
        batch = []
        for _ in range(rng.randrange(0, 9)):
            late = rng.choice([0, 0, 0, 0.5, 1, 3]) if rng.random() < 0.95 else 20
            batch.append(
                event(
                    minute - late - rng.random(),
                    f"r{n}",
                    rng.choice(["Queued", "Running", "Completed", "Completed", "Failed"]),
                    ExperimentName=f"e{rng.randrange(3)}",
                    WorkspaceName=f"ws{rng.randrange(2)}",
                    Tags={"team": f"t{rng.randrange(2)}"},
                )
            )
            n += 1
        batches.append(batch)
    return batches


def window_counts(evaluation: Evaluation, now: datetime) -> dict[str, dict[str, Any]]:
    """Per rule, what its window holds at `now`: (num, den) per group in the window for a
    threshold, the time of the latest event per group seen within the window for a
    flatline."""
    out: dict[str, dict[str, Any]] = {}
    for kind in evaluation.kinds:
        if isinstance(kind, _Threshold):
            counter = kind.counter
            edge = int((now.timestamp() - counter.spec.window) // counter.bucket_s) + 1
            groups = {}
            for key, group in counter.groups.items():
                kept = [c for b, c in group.buckets.items() if b >= edge]
                if kept:
                    groups[key] = (sum(c[0] for c in kept), sum(c[1] for c in kept))
            out[kind.rule.name] = groups
        elif isinstance(kind, _Flatline):
            window = timedelta(seconds=kind.flatline.spec.window)
            out[kind.rule.name] = {
                k: e.TimeGenerated
                for k, e in kind.flatline.last.items()
                if now - e.TimeGenerated <= window
            }
    return out


def replayed_counts(store: Store, now: datetime, text: str = RULES) -> dict[str, dict[str, Any]]:
    """The same from a full replay of every event, with nothing of the snapshot."""
    evaluation = Evaluation(rules(text))
    for event_ in events_between(store, now - timedelta(hours=2)):
        evaluation.observe(event_, runs=False)
    return window_counts(evaluation, now)


def sent(store: Store) -> list[tuple[datetime, str, str, str]]:
    """Every notification as (time, receiver, status, summary), in an order that does not
    depend on the order rules ran in within one tick."""
    return sorted(
        (n.created_at, n.receiver, n.alert["status"], n.alert["summary"]) for n in notes(store)
    )


def state(scheduler: Scheduler) -> Evaluation:
    assert scheduler.evaluation is not None
    return scheduler.evaluation


@pytest.mark.parametrize(("seed", "budget"), [(1, 1 << 20), (2, 1 << 20), (3, 1), (4, 1)])
def test_restart_and_takeover_raise_what_a_replica_that_never_stopped_raises(
    stores: list[Store], seed: int, budget: int
) -> None:
    """Property-style over random histories: one store sees a replica that never stops;
    the other the same events with a restart in the middle of every window (a new
    scheduler: the snapshot is loaded), then a takeover by another replica, then a reload.
    The notifications are the same ones, in the same order, and at every tick after a
    warm-up the window counts are the same; at the end they equal a full replay. With a
    budget of one byte, each tick writes one changed rule: the others are behind, at their
    own positions, and must be caught up from there."""
    steady, moving = stores
    batches = history(seed, 80)
    clock = Clock()
    never = make(steady, clock)
    lease_a, lease_b = SwitchLease(), SwitchLease(held=False)
    a = make(moving, clock, lease=lease_a, budget=budget)
    b = make(moving, clock, lease=lease_b, budget=budget)
    restart, takeover, reload = 23, 41, 62
    for minute, batch in enumerate(batches):
        clock.at(minute)
        for store in stores:
            store.write_batch(batch)
        if minute == restart:
            a = make(moving, clock, lease=lease_a, budget=budget)  # the process restarted
        if minute == takeover:
            lease_a.held, lease_b.held = False, True
        if minute == reload:
            b = make(moving, clock, lease=lease_b, budget=budget)  # a new rule set object
        never.run_once()
        cycle = a.run_once() if lease_a.held else b.run_once()
        assert not (a.run_once().leader if lease_b.held else b.run_once().leader)
        if minute in (0, restart, takeover, reload):
            assert cycle.warmed_up
            current = a if lease_a.held else b
            warm = current.last_warm_up
            assert warm is not None
            if minute == 0:
                assert warm.loaded == 0 and len(warm.replayed) == 4
            elif budget > 1:
                assert (warm.loaded, warm.replayed) == (4, ())
            else:  # rows not yet written after the first start are replayed
                assert warm.loaded + len(warm.replayed) == 4 and warm.loaded >= 1
            assert window_counts(state(current), clock.now) == window_counts(
                state(never), clock.now
            )
    assert sent(moving) == sent(steady)
    assert len(sent(steady)) > 3  # the histories do fire (and resolve) alerts
    now = clock.now
    assert window_counts(state(b), now) == replayed_counts(moving, now)


def test_a_changed_rule_is_replayed_and_an_unchanged_one_loaded(db: Store) -> None:
    """A reload where one rule's filter changed (replayed over its window, from the SQL
    filtered by the statuses it counts), one's limit changed (its counts stay: loaded),
    and one is new (replayed)."""
    clock = Clock()
    first = make(db, clock)
    for minute, batch in enumerate(history(7, 40)):
        clock.at(minute)
        db.write_batch(batch)
        first.run_once()
    changed = RULES.replace("value: 4, window: 15m", "value: 9, window: 15m").replace(
        "when: {status: [Completed]}\n    threshold: {value: 2",
        "when: {status: [Completed], workspace: ws1}\n    threshold: {value: 2",
    )
    changed += """  - name: added
    when: {status: [Canceled, Failed]}
    threshold: {value: 1, window: 5m, every: 1m}
    notify: [oncall]
"""
    reloaded = make(db, clock, changed)
    db.write_batch([event(40.2, "late", "Failed", ExperimentName="e1")])
    clock.at(40.5)
    assert reloaded.run_once().warmed_up
    warm = reloaded.last_warm_up
    assert warm is not None
    assert sorted(warm.replayed) == ["added", "quiet"] and warm.loaded == 3
    assert warm.behind == 1
    counts = window_counts(state(reloaded), clock.now)
    assert counts == replayed_counts(db, clock.now, changed)
    assert counts["quiet"] != replayed_counts(db, clock.now)["quiet"]  # the filter did change
    with db.engine.connect() as conn:
        stored = {r.rule for r in conn.execute(rule_windows.select())}
    assert stored == {"fails", "ratio", "quiet", "silent", "added"}
    smaller = make(db, clock, RULES.split("  - name: silent", maxsplit=1)[0])  # a rule removed
    clock.at(41)
    smaller.run_once()
    with db.engine.connect() as conn:
        stored = {r.rule for r in conn.execute(rule_windows.select())}
    assert stored == {"fails", "ratio", "quiet"}


GONE = '["gone", "2026-11-20T08:00:00+00:00", "Failed"]'
HEAD = '{"format": 1, "bucket_s": 15.0, '


@pytest.mark.parametrize(
    "damage",
    [
        "not json at all",
        HEAD + '"examples": [], "groups": [["x", {}, [1], [2], null, null]]}',
        HEAD + '"examples": [], "groups": [["x", {}, [1], [2], [3], 0, null]]}',
        HEAD + '"examples": [], "groups": [["x", {}, [1, 1], [2, 2], [3, 3], null, null]]}',
        HEAD + '"examples": [], "groups": [["x", {}, [1], [2, 2], [3], null, null]]}',
        HEAD + '"examples": [], "groups": [["x", {}, [1.5], [2], [3], null, null]]}',
        HEAD + '"examples": [5], "groups": []}',
        HEAD + '"examples": [' + GONE + '], "groups": [["x", {}, [], [], [], 0, 0]]}',
        HEAD + '"examples": [], "groups": [["x", {}, [1], [2], [-3], null, null]]}',
        HEAD + '"examples": [], "groups": [["x", {}, ["z"], [2], [3], null, null]]}',
        '{"format": 99, "bucket_s": 15.0, "examples": [], "groups": []}',
        '{"format": 1, "bucket_s": 60.0, "examples": [], "groups": []}',
        '{"format": 1, "examples": []}',
        '{"format": 1}',
    ],
)
def test_a_damaged_row_is_replayed_with_a_log_line(
    db: Store, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    first = make(db, clock)
    for minute, batch in enumerate(history(11, 20)):
        clock.at(minute)
        db.write_batch(batch)
        first.run_once()
    with db.engine.begin() as conn:
        conn.execute(update(rule_windows).where(rule_windows.c.rule == "fails"), {"state": damage})
    second = make(db, clock)
    clock.at(20)
    with caplog.at_level(logging.WARNING):
        assert second.run_once().warmed_up
    warm = second.last_warm_up
    assert warm is not None and warm.replayed == ("fails",) and warm.loaded == 3
    assert any(
        r.message.startswith("rule fails: ") and "replaying it" in r.message for r in caplog.records
    )
    assert window_counts(state(second), clock.now) == replayed_counts(db, clock.now)


def test_a_damaged_or_missing_feed_row_replays_every_rule(
    db: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    first = make(db, clock)
    for minute, batch in enumerate(history(5, 20)):
        clock.at(minute)
        db.write_batch(batch)
        first.run_once()
    with db.engine.begin() as conn:
        conn.execute(update(rule_feed), {"positions": "[1, 2"})
    clock.at(20)
    second = make(db, clock)
    with caplog.at_level(logging.WARNING):
        second.run_once()
    assert second.last_warm_up is not None and len(second.last_warm_up.replayed) == 4
    assert any("feed row unreadable" in r.message for r in caplog.records)
    assert window_counts(state(second), clock.now) == replayed_counts(db, clock.now)
    with db.engine.begin() as conn:
        conn.execute(delete(rule_feed))
    third = make(db, clock)
    third.run_once()
    assert third.last_warm_up is not None and len(third.last_warm_up.replayed) == 4
    assert window_counts(state(third), clock.now) == replayed_counts(db, clock.now)


def test_a_snapshot_too_far_behind_is_replayed_not_caught_up(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumers.service import windows as module

    clock = Clock()
    first = make(db, clock)
    batches = history(3, 30)
    for minute, batch in enumerate(batches[:20]):
        clock.at(minute)
        db.write_batch(batch)
        first.run_once()
    for batch in batches[20:]:  # stored while no replica evaluated
        db.write_batch(batch)
    monkeypatch.setattr(module, "CATCH_UP_EVENTS", 5)
    clock.at(30)
    second = make(db, clock, budget=1)  # rewrites one of the replayed rules per tick
    second.run_once()
    warm = second.last_warm_up
    assert warm is not None and len(warm.replayed) == 4 and warm.behind == 0
    assert window_counts(state(second), clock.now) == replayed_counts(db, clock.now)
    monkeypatch.setattr(module, "CATCH_UP_EVENTS", 50_000)
    third = make(db, clock)  # the rows not rewritten were dropped, not left stale
    clock.at(30.5)
    third.run_once()
    warm = third.last_warm_up
    assert warm is not None and (warm.loaded, len(warm.replayed)) == (1, 3)
    assert window_counts(state(third), clock.now) == replayed_counts(db, clock.now)


def test_postgresql_ids_committed_out_of_order_across_a_restart(fresh_pg: str) -> None:
    """An event whose id was taken before the snapshot but committed after it (a gap below
    the cursor) is counted once after the restart: by the feed, for the loaded rules and
    for a rule replayed because it changed (the replay skips the feed's gaps)."""
    store = open_store(fresh_pg, migrate=True)
    try:
        clock = Clock()
        first = make(store, clock)
        store.write_batch([event(0.1, "a", "Failed", ExperimentName="e1")])
        clock.at(1)
        first.run_once()
        held = store.engine.connect()
        transaction = held.begin()
        late = event(1.5, "slow", "Failed", ExperimentName="e1")
        values = late.model_dump() | {"IngestedAt": T0}
        held.execute(insert(events), values)  # takes an id, not committed yet
        store.write_batch([event(1.6, "b", "Failed", ExperimentName="e1")])
        clock.at(2)
        first.run_once()  # the feed reads b and records the id below it as a gap
        with store.engine.connect() as conn:
            assert orjson.loads(conn.execute(rule_feed.select()).one().positions)["gaps"]
        transaction.commit()
        held.close()
        changed = RULES.replace("value: 4, window: 15m", "value: 4, window: 16m")
        second = make(store, clock, changed)
        clock.at(3)
        second.run_once()
        warm = second.last_warm_up
        assert warm is not None and warm.replayed == ("fails",)
        counts = window_counts(state(second), clock.now)
        assert counts["fails"] == {"ExperimentName=e1": (3, 0)}
        assert counts == replayed_counts(store, clock.now, changed)
        restarted = make(store, clock, changed)
        clock.at(4)
        restarted.run_once()
        assert window_counts(state(restarted), clock.now)["fails"] == {"ExperimentName=e1": (3, 0)}
    finally:
        store.dispose()


def test_the_snapshot_row_is_written_only_when_the_window_changed(db: Store) -> None:
    clock = Clock()
    run = make(db, clock)
    run.run_once()
    with db.engine.connect() as conn:
        written = {r.rule: r.updated_at for r in conn.execute(rule_windows.select())}
    assert set(written) == {"fails", "ratio", "quiet", "silent"}  # even empty: loadable
    db.write_batch([event(0.5, "x", "Failed", ExperimentName="e2")])
    clock.at(1)
    run.run_once()
    with db.engine.connect() as conn:
        after = {r.rule: r.updated_at for r in conn.execute(rule_windows.select())}
        cursor = conn.execute(rule_feed.select()).one().cursor
    changed = {rule for rule in after if after[rule] != written[rule]}
    assert changed == {"fails", "ratio"}  # "quiet" and "silent" count Completed only
    assert cursor == 1
