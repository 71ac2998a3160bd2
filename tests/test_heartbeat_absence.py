"""Absence rules with `since: last_seen`: a run is judged by its last sign of life (status
events and run updates such as exec's heartbeats, the store's LastSeen), not by how long its
status has been unchanged. The scheduler against a real store, on a simulated clock."""

from __future__ import annotations

from datetime import timedelta

from consumers.model.updates import RunUpdate
from consumers.store import Store
from tests.rulekit import T0, Clock, event, notes, scheduler, summaries

RULES = """
rules:
  - name: silent
    when: {experiment: train}
    absence: {limits: {Running: 5m}, since: last_seen, every: 1m}
    notify: [oncall, chat]
  - name: stuck
    when: {experiment: train}
    absence: {limits: {Running: 5m}, every: 1m}
    notify: [oncall]
"""


def beat(store: Store, minutes: float, run: str) -> None:
    """A heartbeat: an empty run update, as `runwatch run exec` publishes."""
    update = RunUpdate(
        TimeGenerated=T0 + timedelta(minutes=minutes),
        RunId=run,
        ExperimentName="train",
        WorkspaceName="ws1",
    )
    store.write_batch([], updates=[(0, update)])


def test_a_run_whose_heartbeats_stop_is_flagged_and_resolves_when_they_resume(
    store: Store,
) -> None:
    clock = Clock()
    run = scheduler(store, RULES, clock)
    store.write_batch([event(0, "alive", "Running"), event(0, "frozen", "Running")])
    beat(store, 3, "alive")
    clock.at(4)
    assert run.run_once().alerts == 0
    clock.at(6)
    assert run.run_once().alerts == 3  # silent: frozen only; stuck (status age): both
    silent = [s for r, _, s in summaries(store) if r == "chat"]
    assert silent == [
        "run frozen (Running) has sent nothing for 6m 00s (limit 5m 00s): no heartbeat, "
        "no status change"
    ]
    for minutes in (6, 9, 12):
        beat(store, minutes, "alive")
        clock.at(minutes + 1)
        run.run_once()
    assert [s for r, _, s in summaries(store) if r == "chat"] == silent  # alive never, frozen once
    beat(store, 13.5, "frozen")  # it wakes up
    clock.at(14)
    assert run.run_once().alerts == 1
    assert summaries(store)[-1][:2] == ("chat", "resolved")
    assert len([n for n in notes(store) if n.alert["rule"] == "silent"]) == 3


def test_after_a_restart_the_store_s_last_seen_counts(store: Store) -> None:
    clock = Clock()
    store.write_batch([event(0, "alive", "Running")])
    beat(store, 8, "alive")
    clock.at(10)
    silent_only = RULES.split("  - name: stuck", maxsplit=1)[0]
    fresh = scheduler(store, silent_only, clock)  # warmed up from the store
    assert fresh.run_once().alerts == 0  # Running for 10 min, but heard from 2 min ago
    clock.at(14)
    assert fresh.run_once().alerts == 1
