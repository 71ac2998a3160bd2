"""The texts stateful alerts carry into every receiver: a stuck run or a long run under a
minute says seconds (issue 15, "Running for 0m (limit 0m)")."""

from __future__ import annotations

from consumers.store import Store
from tests.rulekit import Clock, event, scheduler, summaries

STUCK = """
rules:
  - name: stuck
    absence:
      limits: {Running: 30s}
      every: 10s
    notify: [oncall]
"""

LONG = """
rules:
  - name: long
    duration:
      max: 30s
      every: 10s
    notify: [oncall]
"""


def test_a_run_stuck_for_seconds_says_seconds(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, STUCK, clock)
    store.write_batch([event(0, "quick", "Running")])
    clock.at(0.75)
    assert run.run_once().alerts == 1
    assert summaries(store) == [
        ("oncall", "firing", "run quick has been Running for 45s (limit 30s)")
    ]


def test_a_stuck_run_over_a_minute_keeps_minutes_and_seconds(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, STUCK.replace("30s", "90s"), clock)
    store.write_batch([event(0, "slow", "Running")])
    clock.at(2.5)
    assert run.run_once().alerts == 1
    assert summaries(store)[0][2] == "run slow has been Running for 2m 30s (limit 1m 30s)"


def test_a_long_run_under_a_minute_says_seconds(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, LONG, clock)
    store.write_batch([event(0, "quick", "Running")])
    clock.at(0.75)
    assert run.run_once().alerts == 1
    (summary,) = [s for _, _, s in summaries(store)]
    assert summary.startswith("run quick has been Running for 45s") and "limit 30s" in summary
