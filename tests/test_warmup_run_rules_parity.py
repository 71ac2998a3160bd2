"""Absence and duration rules raise, across restarts and a takeover, what a replica that
never stopped raises (docs/deploys.md, "Rule warm-up"), with late and out-of-order events:
a duration baseline is the experiment's last n completed runs by completion time however
they arrived, and a run that completed before a warm-up stays ended when a late Running
of it arrives after."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from consumers.model.events import RunStatusEvent
from consumers.rules.tracker import RunTracker
from consumers.service.scheduler import Scheduler
from consumers.service.windows import DEFAULT_BUDGET
from consumers.store import Store
from tests import test_rule_warmup
from tests.rulekit import T0, Clock, SwitchLease, event, notes

stores = test_rule_warmup.stores  # two stores of each backend


def runs_history(seed: int, minutes: int) -> list[list[RunStatusEvent]]:
    """Per minute, the events stored in it: runs of four experiments that queue, run for
    a few minutes to an hour (some get stuck) and complete or fail; some events stored
    minutes late, a Running after its run's completion among them."""
    rng = random.Random(seed)
    batches: list[list[RunStatusEvent]] = [[] for _ in range(minutes)]
    for n in range(minutes * 2):
        start = rng.uniform(0, minutes - 1)
        experiment = f"e{rng.randrange(4)}"
        team = {"team": f"t{rng.randrange(2)}", "blob": "x" * rng.randrange(50)}
        length = rng.choice([3, 5, 8, 12, 40, 400])  # 400: still running at the end
        steps = [(start, "Queued"), (start + rng.uniform(0, 12), "Running")]
        steps.append((steps[1][0] + length, rng.choice(["Completed"] * 4 + ["Failed"])))
        for at, status in steps:
            stored = at + (rng.choice([0, 0, 0, 2]) if rng.random() < 0.9 else 15)
            if stored < minutes:
                batches[int(stored)].append(
                    event(at, f"r{n}", status, ExperimentName=experiment, Tags=team)
                )
    return batches


RUN_RULES = """
rules:
  - name: stuck-queued
    when: {experiment: e0}
    absence: {limits: {Queued: 6m, Running: 45m}, every: 1m}
    notify: [oncall]
  - name: stuck-any
    when: {where: "tags.team == 't1'"}
    absence: {limits: {Running: 30m}, every: 1m}
    notify: [oncall, chat]
  - name: long-e1
    when: {experiment: e1}
    duration: {factor: 2, baseline_runs: 3, every: 1m}
    notify: [oncall]
  - name: long-any
    duration: {factor: 1.5, max: 2h, baseline_runs: 4, every: 1m}
    notify: [oncall, chat]
"""


def make(store: Store, clock: Clock, lease: Any = None) -> Scheduler:
    return test_rule_warmup.make(store, clock, RUN_RULES, lease, budget=DEFAULT_BUDGET)


def test_absence_and_duration_rules_raise_what_a_replica_that_never_stopped_raises(
    stores: list[Store],
) -> None:
    """Seed 2 has both defects: baselines that kept runs by arrival (never-stopped) or by
    LastSeen (warmed up), and a run completed before the takeover that a late Running made
    active again on the new leader (a 30m and a 45m absence alert no one else raised)."""
    steady, moving = stores
    clock = Clock()
    never = make(steady, clock)
    lease_a, lease_b = SwitchLease(), SwitchLease(held=False)
    a = make(moving, clock, lease_a)
    b = make(moving, clock, lease_b)
    for minute, batch in enumerate(runs_history(2, 150)):
        clock.at(minute)
        for store in stores:
            store.write_batch(batch)
        if minute in (37, 71, 110):
            a = make(moving, clock, lease_a)  # the process restarted
        if minute == 90:
            lease_a.held, lease_b.held = False, True
        if minute == 128:
            b = make(moving, clock, lease_b)
        never.run_once()
        (a if lease_a.held else b).run_once()
    kinds = {n.alert["rule"] for n in notes(steady)}
    assert kinds == {"stuck-queued", "stuck-any", "long-e1", "long-any"}  # they do fire
    assert test_rule_warmup.sent(moving) == test_rule_warmup.sent(steady)


def _tracker() -> RunTracker:
    return RunTracker(lambda experiments, n: {e: [] for e in experiments}, 3)


@pytest.mark.parametrize("order", ["in order", "late"])
def test_a_baseline_is_the_last_runs_by_completion_not_by_arrival(order: str) -> None:
    tracker = _tracker()
    runs = [("b1", 0, 1), ("b2", 10, 2), ("b3", 20, 3), ("b4", 30, 4)]  # id, start, minutes
    if order == "late":
        runs = runs[1:] + runs[:1]  # b1, the oldest, completes last in arrival order
    for run_id, start, minutes in runs:
        tracker.observe(event(start, run_id, "Running"))
        tracker.observe(event(start + minutes, run_id, "Completed"))
    assert tracker.baseline("train", 3) == [120.0, 180.0, 240.0]


def test_a_running_stored_after_its_completion_sets_the_duration() -> None:
    tracker = _tracker()
    tracker.observe(event(0, "b1", "Queued"))
    tracker.observe(event(10, "b1", "Completed"))
    assert tracker.baseline("train", 1) is None  # no start yet
    tracker.observe(event(4, "b1", "Running"))
    tracker.observe(event(2, "b1", "Running"))
    assert tracker.baseline("train", 1) == [480.0]
    assert not tracker.active


def test_a_run_that_ended_before_the_warm_up_stays_ended() -> None:
    ended = {"done": ("train", T0 + timedelta(minutes=10), None), "failed": None}
    tracker = RunTracker(
        lambda experiments, n: {e: [] for e in experiments},
        3,
        ended=lambda ids: {r: ended[r] for r in ids if r in ended},
    )
    tracker.load_ended(["done", "failed", "new"])
    for run_id in ("done", "failed", "new"):
        tracker.observe(event(4, run_id, "Running"))
    assert list(tracker.active) == ["new"]
    assert tracker.baseline("train", 1) == [360.0]
