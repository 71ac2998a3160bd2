"""The run side of a warm-up (docs/deploys.md, "Rule warm-up"), on real SQLite and
PostgreSQL: duration baselines of many experiments read in one statement are those read one
experiment at a time; run states read without the columns no rule reads are what the
tracker keeps of the full rows; alert states are deleted in batches; the rows ahead of the
feed skip exactly the events they counted."""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import func, select

from consumers.model.instances import InstanceState
from consumers.rules.reads import Reads
from consumers.service.windows import _Skipping
from consumers.store import Store
from consumers.store.alert_states import save_states
from consumers.store.feed import baseline_loader, current_runs
from consumers.store.schema import alert_states, events
from tests import test_rule_warmup
from tests.rulekit import T0, event

db = test_rule_warmup.db  # one store of each backend


def _completed(store: Store, experiment: str, count: int, offset: int, name: str = "") -> None:
    batch = []
    for i in range(count):
        run = f"{name or experiment}-{i}"
        start = offset + i * 2
        batch += [
            event(start, run, "Running", ExperimentName=experiment),
            event(start + 1 + (i % 5) * 0.5, run, "Completed", ExperimentName=experiment),
        ]
    store.write_batch(batch)


def test_baselines_of_many_experiments_in_one_statement_equal_one_at_a_time(db: Store) -> None:
    """Past one statement's chunk of experiments too; an experiment without completed
    runs, and one unknown, have empty baselines; the id boundary holds in both."""
    for index in range(105):
        _completed(db, f"x{index}", 1 + index % 7, index)
    _completed(db, "late", 4, 0)
    db.write_batch([event(3, "q1", "Running", ExperimentName="idle")])
    with db.engine.connect() as conn:
        boundary = conn.execute(select(func.max(events.c.id))).scalar()
    _completed(db, "late", 3, 50, "later")  # stored after the boundary: the feed's to deliver
    load = baseline_loader(db, stored_up_to=boundary)
    names = [f"x{i}" for i in range(105)] + ["late", "idle", "nowhere"]
    together = load(names, 5)
    assert set(together) == set(names)
    for name in names:
        assert together[name] == load([name], 5)[name], name
    assert [(r, s) for r, _, s in together["x6"]] == [
        (f"x6-{i}", 60.0 + (i % 5) * 30.0) for i in range(2, 7)
    ]
    assert [r for r, _, _ in together["late"]] == ["late-0", "late-1", "late-2", "late-3"]
    assert together["idle"] == together["nowhere"] == []


def test_runs_read_without_unread_columns_are_what_the_tracker_keeps(db: Store) -> None:
    db.write_batch(
        [
            event(1, "a", "Running", Tags={"team": "t1", "big": "x" * 5000}, Message="hello"),
            event(2, "b", "Queued", Properties={"owner": "o"}, Message="queued"),
        ]
    )
    for reads in (
        Reads(),
        Reads(columns=frozenset({"Message"})),
        Reads(keys={"Tags": frozenset({"team"})}),
        Reads(everything=True),
    ):
        full = [(reads.cut(e), s) for e, s in current_runs(db, None)]
        assert [(reads.cut(e), s) for e, s in current_runs(db, None, reads.kept())] == full
    assert [e.Tags for e, _ in current_runs(db, None, frozenset())] == [{}, {}]


def test_alert_states_are_deleted_in_batches(db: Store) -> None:
    keep = {("r", f"g{i}"): InstanceState(history="1") for i in range(1200)}
    with db.engine.begin() as conn:
        save_states(conn, keep, T0)
    gone: dict[tuple[str, str], InstanceState | None] = {
        ("r", f"g{i}"): None for i in range(0, 1200, 2)
    }
    gone |= {("r", f"g{i}"): InstanceState(history="0") for i in range(1, 1100, 2)}
    with db.engine.begin() as conn:
        save_states(conn, gone, T0 + timedelta(minutes=1))
        left = sorted(conn.execute(select(alert_states.c.group_key)).scalars())
    assert left == sorted(f"g{i}" for i in range(1101, 1200, 2))


def test_rows_ahead_of_the_feed_skip_exactly_the_events_they_counted() -> None:
    rng = random.Random(4)
    for _ in range(200):
        skips = [
            (
                rng.randrange(100),
                frozenset(rng.sample(range(100), rng.randrange(3))),
                f"rule{i}",
            )
            for i in range(rng.randrange(0, 12))
        ]
        skipping = _Skipping(skips)
        for event_id in range(-1, 102):
            naive = {n for c, gaps, n in skips if event_id <= c and event_id not in gaps}
            assert skipping.rules(event_id) == naive
