"""Every scheduled rule kind and transition on a real SQLite store with an injected clock:
threshold (count, ratio, group-by, N of M, resolve after K), absence, flatline, durations,
tree roll-ups, replay safety, and the lease."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from consumers.outbox.recorder import recording
from consumers.rules.evaluation import mark_stale
from consumers.rules.model import Rule
from consumers.rules.tracker import RunTracker
from consumers.store import Store, open_store
from tests.rulekit import (
    T0,
    Clock,
    SwitchLease,
    event,
    notes,
    rules,
    scheduler,
    summaries,
)

FAILURES = """
rules:
  - name: failures
    when: {status: [Failed]}
    threshold:
      value: 3
      op: ">="
      window: 15m
      every: 1m
      group_by: [WorkspaceName]
      resolve_after: 2
    notify: [oncall, chat]
"""


def test_threshold_fires_once_then_resolves_after_k_clear_periods(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, FAILURES, clock)
    run.run_once()  # warm-up on an empty store
    store.write_batch([event(i, f"r{i}", "Failed") for i in range(3)])
    store.write_batch([event(1, "other", "Failed", WorkspaceName="ws2")])
    clock.at(3)
    cycle = run.run_once()
    assert cycle.alerts == 1 and cycle.notifications == 2
    assert summaries(store) == [
        ("chat", "firing", "failures: 3 events in 15m in WorkspaceName=ws1 (>= 3)"),
        ("oncall", "firing", "failures: 3 events in 15m in WorkspaceName=ws1 (>= 3)"),
    ]
    # Still breached next minute: no second notification.
    clock.at(4)
    assert run.run_once().alerts == 0
    # The window slides past the first failure (minute 0 + 15m): clear once, not resolved yet.
    clock.at(15.5)
    assert run.run_once().alerts == 0
    clock.at(16.5)
    cycle = run.run_once()
    assert cycle.alerts == 1
    # Only the receiver that opted in (chat) hears of the resolution.
    assert summaries(store)[-1] == (
        "chat",
        "resolved",
        "resolved: failures: 3 events in 15m in WorkspaceName=ws1 (>= 3)",
    )
    assert len(notes(store)) == 3
    resolved = notes(store)[-1]
    assert resolved.followup  # threads under the firing mail
    assert resolved.fingerprint == notes(store)[0].fingerprint


def test_threshold_evaluates_only_every_interval(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, FAILURES.replace("every: 1m", "every: 5m"), clock)
    run.run_once()
    store.write_batch([event(0.1 * i, f"r{i}", "Failed") for i in range(3)])
    clock.at(1)
    assert run.run_once().alerts == 0  # not due until minute 5
    clock.at(5)
    assert run.run_once().alerts == 1


RATIO = """
rules:
  - name: failure-ratio
    when: {status: [Failed]}
    threshold:
      measure: ratio
      of: {status: [Completed, Failed, Canceled]}
      op: ">"
      value: 0.5
      min_events: 4
      window: 1h
      group_by: [tags.team]
    notify: [oncall]
"""


def test_ratio_per_tag_group_needs_min_events(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, RATIO, clock)
    run.run_once()
    nlp = {"Tags": {"team": "nlp"}}
    cv = {"Tags": {"team": "cv"}}
    store.write_batch(
        [
            event(1, "a", "Failed", **nlp),
            event(2, "b", "Failed", **nlp),
            event(3, "c", "Completed", **nlp),
        ]
        + [event(1, f"v{i}", "Failed", **cv) for i in range(3)]
        + [event(2, f"w{i}", "Completed", **cv) for i in range(2)]
        + [event(2, f"q{i}", "Queued", **cv) for i in range(9)]  # not in the denominator
    )
    clock.at(5)
    assert run.run_once().alerts == 1  # nlp: 2 of 3 is over 50% but under min_events
    assert summaries(store) == [
        ("oncall", "firing", "failure-ratio: 3 of 5 (60%) in 1h in Tags.team=cv (> 50%)")
    ]
    alert = notes(store)[0].alert
    assert alert["group"] == {"Tags.team": "cv"} and alert["value"] == pytest.approx(0.6)


def test_n_of_m_evaluation_periods(store: Store) -> None:
    clock = Clock()
    text = FAILURES.replace("resolve_after: 2", "breaches: 2\n      periods: 3")
    run = scheduler(store, text, clock)
    run.run_once()
    store.write_batch([event(0.5 + 0.1 * i, f"r{i}", "Failed") for i in range(3)])
    clock.at(1)
    assert run.run_once().alerts == 0  # 1 of the last 3 breached
    clock.at(2)
    assert run.run_once().alerts == 1  # 2 of 3: fires


def test_state_survives_a_new_leader(store: Store) -> None:
    """Replica A fires; replica B takes the lease over, reads the state, does not fire again,
    and resolves when the condition clears."""
    clock = Clock()
    lease_a, lease_b = SwitchLease(), SwitchLease(held=False)
    a = scheduler(store, FAILURES, clock, lease_a)
    b = scheduler(store, FAILURES, clock, lease_b)
    a.run_once()
    store.write_batch([event(i, f"r{i}", "Failed") for i in range(3)])
    clock.at(3)
    assert a.run_once().alerts == 1
    assert not b.run_once().leader
    lease_a.held, lease_b.held = False, True
    clock.at(4)
    assert not a.run_once().leader
    cycle = b.run_once()
    assert cycle.warmed_up and cycle.alerts == 0
    clock.at(15.5)
    b.run_once()
    clock.at(16.5)
    assert b.run_once().alerts == 1
    assert [s for _, s, _ in summaries(store)] == ["firing", "firing", "resolved"]


ABSENCE = """
rules:
  - name: stuck
    when: {experiment: "train*"}
    absence:
      limits: {Queued: 2h, Running: 12h}
      every: 1m
    notify: [oncall, chat]
"""


def test_absence_fires_for_a_stuck_run_and_resolves_when_it_moves_on(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, ABSENCE, clock)
    store.write_batch(
        [
            event(0, "stuck", "Queued"),
            event(0, "elsewhere", "Queued", ExperimentName="eval"),  # not this rule's
            event(60, "moving", "Queued"),
        ]
    )
    clock.at(119)
    run.run_once()
    assert notes(store) == []
    clock.at(121)
    assert run.run_once().alerts == 1
    assert summaries(store)[0][2] == "run stuck has been Queued for 2h 01m (limit 2h 00m)"
    store.write_batch([event(125, "stuck", "Running")])
    clock.at(126)
    assert run.run_once().alerts == 1
    assert summaries(store)[-1][:2] == ("chat", "resolved")
    # Running has its own limit: 12 h later it is stuck again (a new episode).
    clock.at(125 + 12 * 60 + 1)
    assert run.run_once().alerts == 2  # and "moving", Queued since minute 60
    stuck = [n for n in notes(store) if n.alert["summary"].startswith("run stuck has been Running")]
    assert len(stuck) == 2  # oncall and chat


def test_absence_after_restart_reads_runs_from_the_store(store: Store) -> None:
    clock = Clock()
    store.write_batch([event(0, "old", "Running", ExperimentName="train-x")])
    clock.at(13 * 60)
    assert scheduler(store, ABSENCE, clock).run_once().alerts == 1


FLATLINE = """
rules:
  - name: nightly-missing
    when: {experiment: nightly-train, status: [Completed]}
    flatline:
      window: 24h
      every: 10m
    notify: [oncall, chat]
"""


def test_flatline_fires_when_nothing_completes_and_resolves_on_the_next(store: Store) -> None:
    clock = Clock()
    store.write_batch([event(0, "n1", "Completed", ExperimentName="nightly-train")])
    run = scheduler(store, FLATLINE, clock)
    clock.at(60)
    run.run_once()
    store.write_batch([event(90, "n2", "Failed", ExperimentName="nightly-train")])
    clock.at(24 * 60 - 5)
    assert run.run_once().alerts == 0
    clock.at(24 * 60 + 10)
    assert run.run_once().alerts == 1
    assert summaries(store)[0][2] == (
        "nightly-missing: no matching event in 24h 00m (last one at 2026-11-20 08:00 UTC)"
    )
    store.write_batch([event(24 * 60 + 15, "n3", "Completed", ExperimentName="nightly-train")])
    clock.at(24 * 60 + 20)
    assert run.run_once().alerts == 1
    assert summaries(store)[-1][:2] == ("chat", "resolved")


def test_flatline_waits_for_a_full_window_of_history(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, FLATLINE, clock)
    store.write_batch([event(0, "x", "Queued")])  # the store's history starts here
    clock.at(60)
    assert run.run_once().alerts == 0
    clock.at(24 * 60 + 10)
    assert run.run_once().alerts == 1
    note = notes(store)[0]
    assert note.run_id == "flatline:nightly-missing"
    assert note.alert["summary"].endswith("(none in the window)")


DURATION = """
rules:
  - name: too-long
    when: {experiment: train}
    duration:
      max: 6h
      factor: 2
      baseline_runs: 3
      every: 1m
    notify: [oncall]
"""


def _completed(start: float, minutes: float, run: str) -> list:
    return [event(start, run, "Running"), event(start + minutes, run, "Completed")]


def test_duration_absolute_limit(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, DURATION, clock)
    store.write_batch([event(0, "long", "Running")])
    clock.at(6 * 60 - 1)
    assert run.run_once().alerts == 0  # no baseline yet: only the absolute limit applies
    clock.at(6 * 60 + 1)
    assert run.run_once().alerts == 1
    assert summaries(store)[0][2] == "run long has been Running for 6h 01m (limit 6h 00m)"
    store.write_batch([event(6 * 60 + 2, "long", "Completed")])
    clock.at(6 * 60 + 3)
    assert run.run_once().alerts == 1  # resolved (no receiver opted in: nothing sent)
    assert len(notes(store)) == 1


def test_duration_relative_to_p90_only_once_n_runs_exist(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, DURATION, clock)
    store.write_batch(_completed(0, 10, "b1") + _completed(0, 20, "b2"))
    store.write_batch([event(100, "slow", "Running")])
    clock.at(100 + 45)
    assert run.run_once().alerts == 0  # 2 completed runs < baseline_runs 3
    store.write_batch(_completed(30, 30, "b3"))  # baseline 10, 20, 30 min: p90 30 min
    clock.at(100 + 59)
    assert run.run_once().alerts == 0  # 59 min <= 2 x 30
    clock.at(100 + 61)
    assert run.run_once().alerts == 1
    assert summaries(store)[0][2] == (
        "run slow has been Running for 1h 01m (2 x p90 30m 00s of the last 3 completed runs)"
    )


def test_duration_baseline_from_the_store_after_restart(store: Store) -> None:
    clock = Clock()
    store.write_batch(_completed(0, 10, "b1") + _completed(0, 10, "b2") + _completed(0, 10, "b3"))
    store.write_batch([event(60, "slow", "Running")])
    clock.at(60 + 21)
    assert scheduler(store, DURATION, clock).run_once().alerts == 1


def test_duration_baseline_counts_a_backlogged_run_once(store: Store) -> None:
    """Issue 13: runs that completed before the warm-up but reached the store after it (a
    restart with a backlog, a backfill) were counted twice, once by the warm-up's baseline
    load and once by the feed: two completed runs made a baseline of 3 (or 4) entries."""
    _backlogged_runs_count_once(store)


def test_duration_baseline_counts_a_backlogged_run_once_on_postgresql(fresh_pg: str) -> None:
    pg = open_store(fresh_pg, migrate=True)
    try:
        _backlogged_runs_count_once(pg)
    finally:
        pg.dispose()


def _backlogged_runs_count_once(store: Store) -> None:
    clock = Clock()
    clock.at(10)
    run = scheduler(store, DURATION, clock)
    run.run_once()  # warm-up on an empty store at minute 10
    # The backlog: two runs that completed at minutes 1-2 and 3-4, stored only now.
    store.write_batch(_completed(1, 1, "b1") + _completed(3, 1, "b2"))
    store.write_batch([event(5, "slow", "Running")])
    clock.at(5 + 50)  # 50 min: far over 2 x p90 (1 min), but only 2 of the 3 runs exist
    assert run.run_once().alerts == 0
    assert run.evaluation is not None
    assert run.evaluation.runs.baseline("train", 2) == [60.0, 60.0]
    assert run.evaluation.runs.baseline("train", 3) is None
    store.write_batch(_completed(6, 1, "b3"))  # the third: now the relative limit applies
    clock.at(5 + 51)
    assert run.run_once().alerts == 1
    assert summaries(store)[0][2] == (
        "run slow has been Running for 51m 00s (2 x p90 1m 00s of the last 3 completed runs)"
    )


def test_duration_baseline_counts_a_run_once_whichever_way_it_arrives(store: Store) -> None:
    """A run stored before the warm-up (loaded from the store) whose completion the feed
    also delivers, and a run seen by both the load and the feed after a re-warm-up."""
    clock = Clock()
    store.write_batch(_completed(0, 1, "b1"))
    clock.at(10)
    run = scheduler(store, DURATION, clock)
    run.run_once()
    store.write_batch([event(11, "b2", "Running")])
    clock.at(12)
    run.run_once()
    store.write_batch([event(12, "b2", "Completed"), event(13, "slow", "Running")])
    clock.at(13 + 30)
    assert run.run_once().alerts == 0
    assert run.evaluation is not None
    assert run.evaluation.runs.baseline("train", 2) == [60.0, 60.0]
    assert run.evaluation.runs.baseline("train", 3) is None


def test_run_tracker_counts_a_completed_run_once_from_load_and_feed() -> None:
    """The tracker's side of the same defect: whatever its loader returns, a run the feed
    then completes again is one baseline entry, and the baseline keeps the last n runs."""
    loaded = [("b1", T0 + timedelta(minutes=5), 60.0), ("b2", T0 + timedelta(minutes=12), 120.0)]
    tracker = RunTracker(lambda experiments, n: {e: loaded[-n:] for e in experiments}, 3)
    for run_id, start in (("b2", 10), ("b3", 20)):
        tracker.observe(event(start, run_id, "Running"))
        tracker.observe(event(start + 2, run_id, "Completed"))
    assert tracker.baseline("train", 3) == [60.0, 120.0, 120.0]
    assert tracker.baseline("train", 4) is None
    tracker.observe(event(30, "b4", "Running"))
    tracker.observe(event(35, "b4", "Completed"))
    assert tracker.baseline("train", 3) == [120.0, 120.0, 300.0]


def test_rules_about_one_experiment_judge_its_runs_as_they_change() -> None:
    """Absence and duration rules naming one experiment walk that experiment's runs (an
    index of the active runs, redone after every change), a glob walks them all."""
    from consumers.rules.absence import StuckRuns
    from consumers.rules.durations import LongRuns
    from consumers.rules.guard import RuleGuard

    tracker = RunTracker()
    long_train, long_any, stuck_eval = (
        LongRuns(r, RuleGuard()) if r.duration else StuckRuns(r, RuleGuard())
        for r in rules(
            """
rules:
  - {name: a, when: {experiment: train}, duration: {max: 1h}, notify: [oncall]}
  - {name: b, when: {experiment: "tr*"}, duration: {max: 1h}, notify: [oncall]}
  - {name: c, when: {experiment: eval}, absence: {limits: {Queued: 30m}}, notify: [oncall]}
"""
        )
    )
    assert isinstance(long_train, LongRuns) and isinstance(long_any, LongRuns)
    assert isinstance(stuck_eval, StuckRuns)
    tracker.observe(event(0, "t1", "Running"))
    tracker.observe(event(0, "e1", "Queued", ExperimentName="eval"))
    at = T0 + timedelta(hours=2)
    assert [f.group_key for f in long_train.evaluate(tracker, at)] == ["t1"]
    assert [f.group_key for f in stuck_eval.evaluate(tracker, at)] == ["e1"]
    tracker.observe(event(1, "t2", "Running"))  # after the index was built
    tracker.observe(event(1, "t3", "Running", ExperimentName="train2"))
    tracker.observe(event(2, "e1", "Running", ExperimentName="eval"))
    assert [f.group_key for f in long_train.evaluate(tracker, at)] == ["t1", "t2"]
    assert [f.group_key for f in long_any.evaluate(tracker, at)] == ["t1", "t2", "t3"]
    assert stuck_eval.evaluate(tracker, at) == []
    tracker.observe(event(3, "t1", "Completed"))
    assert [f.group_key for f in long_train.evaluate(tracker, at)] == ["t2"]


TREE = """
rules:
  - name: pipeline-failed
    when: {status: [Failed]}
    tree: {mode: rollup, wait: 30m}
    notify: [oncall]
"""


def _pipeline(root: str, failing: set[int], steps: int = 12) -> list:
    out = [event(0, root, "Running", RunType="pipeline")]
    for i in range(steps):
        child = {"ParentRunId": root, "RootRunId": root, "Tags": {"step": f"step{i}"}}
        status = "Failed" if i in failing else "Completed"
        extra = {"Message": f"step{i} exploded"} if i in failing else {}
        out += [event(1 + i, f"{root}.{i}", "Running", **child)]
        out += [event(2 + i, f"{root}.{i}", status, **child, **extra)]
    return out


def test_tree_rollup_one_alert_per_root_with_child_details(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, TREE, clock)
    run.run_once()
    store.write_batch(_pipeline("p1", {2, 5, 7}))
    store.write_batch([event(15, "p1", "Failed", RunType="pipeline")])
    clock.at(16)
    assert run.run_once().alerts == 1
    clock.at(17)
    assert run.run_once().alerts == 0  # once per root
    [note] = notes(store)
    assert note.run_id == "p1"
    assert note.alert["summary"] == "3 of 12 steps failed in p1: step2, step5, step7"
    assert [d["name"] for d in note.alert["details"]] == ["step2", "step5", "step7"]
    assert note.alert["details"][0]["message"] == "step2 exploded"


def test_tree_rollup_after_wait_while_the_root_still_runs(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, TREE, clock)
    run.run_once()
    store.write_batch(_pipeline("p2", {0}, steps=2))
    clock.at(20)
    assert run.run_once().alerts == 0
    clock.at(33)  # first failure at minute 2 + wait 30m
    assert run.run_once().alerts == 1
    assert notes(store)[0].alert["summary"] == "1 of 2 steps failed in p2: step0"


def test_tree_each_child_and_root_only_modes_are_per_event() -> None:
    from consumers.rules.engine import RuleSet

    ruleset = RuleSet(
        rules(
            """
rules:
  - name: each
    when: {status: [Failed]}
    tree: {mode: each}
    notify: [oncall]
  - name: root-only
    when: {status: [Failed]}
    tree: {mode: root}
    notify: [oncall]
"""
        )
    )
    child = event(1, "c", "Failed", ParentRunId="p", RootRunId="p")
    root = event(2, "p", "Failed")
    assert [a.rule for a in ruleset.evaluate(child)] == ["each"]
    assert [a.rule for a in ruleset.evaluate(root)] == ["root-only"]
    assert ruleset.scheduled == ()


def test_stale_per_event_alerts_are_recorded_not_sent(store: Store) -> None:
    from consumers.rules.engine import RuleSet

    ruleset = RuleSet(rules("rules: [{name: failed, when: {status: [Failed]}, notify: [oncall]}]"))
    old, fresh = event(0, "old", "Failed"), event(119, "fresh", "Failed")
    now = event(120, "x", "Queued").TimeGenerated
    alerts = mark_stale(ruleset.evaluate(old) + ruleset.evaluate(fresh), now, 3600)
    store.write_batch([old, fresh], record=recording(alerts, {"oncall": "email"}), now=now)
    states = {n.run_id: (n.state, n.reason) for n in notes(store)}
    assert states == {"old": ("suppressed", "stale"), "fresh": ("pending", None)}


def test_stale_tree_rollup_of_a_replayed_pipeline(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, TREE, clock, horizon_s=3600)
    run.run_once()
    store.write_batch([*_pipeline("p3", {1}, steps=3), event(6, "p3", "Failed")])
    clock.at(5 * 60)  # consumed five hours late (an offset reset)
    assert run.run_once().alerts == 1
    [note] = notes(store)
    assert (note.state, note.reason) == ("suppressed", "stale")


def test_without_the_lease_nothing_is_evaluated(store: Store) -> None:
    clock = Clock()
    lease = SwitchLease(held=False)
    run = scheduler(store, FAILURES, clock, lease)
    store.write_batch([event(i, f"r{i}", "Failed") for i in range(3)])
    clock.at(3)
    assert not run.run_once().leader
    assert notes(store) == []


def test_cycle_reads_only_new_events(store: Store) -> None:
    clock = Clock()
    run = scheduler(store, FAILURES, clock)
    store.write_batch([event(i, f"h{i}", "Completed") for i in range(50)])
    run.run_once()
    store.write_batch([event(60, "n1", "Failed"), event(61, "n2", "Failed")])
    clock.at(62)
    assert run.run_once().events == 2
    assert run.run_once().events == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"threshold": {"measure": "ratio", "value": 0.5, "window": "1h"}}, "needs `of`"),
        ({"threshold": {"value": 1, "window": "1h", "breaches": 3, "periods": 2}}, "exceed"),
        ({"threshold": {"value": 1, "window": "1h", "group_by": ["Tags"]}}, "object"),
        ({"absence": {"limits": {"Failed": "1h"}}}, "terminal"),
        ({"duration": {"every": "1m"}}, "give max, factor"),
        (
            {"threshold": {"value": 1, "window": "1h"}, "absence": {"limits": {"Queued": "1h"}}},
            "one kind",
        ),
    ],
)
def test_rule_kind_validation(section: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Rule.model_validate({"name": "r", "notify": ["oncall"], **section})


def test_threshold_and_rollup_on_postgresql(pg_url: str) -> None:
    """The same path on PostgreSQL: states upserted, notifications written, takeover."""
    from consumers.store import open_store

    store = open_store(pg_url, migrate=True)
    try:
        clock = Clock()
        lease_a, lease_b = SwitchLease(), SwitchLease(held=False)
        a = scheduler(store, FAILURES, clock, lease_a)
        a.run_once()
        store.write_batch([event(i, f"r{i}", "Failed") for i in range(3)])
        clock.at(3)
        assert a.run_once().alerts == 1
        lease_a.held, lease_b.held = False, True
        b = scheduler(store, FAILURES, clock, lease_b)
        clock.at(16.5)
        b.run_once()
        clock.at(17.5)
        assert b.run_once().alerts == 1
        assert [s for _, s, _ in summaries(store)] == ["firing", "firing", "resolved"]
        tree = scheduler(store, TREE, clock)
        tree.run_once()
        store.write_batch(_pipeline("pg", {3}, steps=4))
        clock.at(40)
        assert tree.run_once().alerts == 1
        assert notes(store)[-1].alert["summary"] == "1 of 4 steps failed in pg: step3"
    finally:
        store.dispose()


def test_real_store_lease_moves_evaluation_to_another_replica(store: Store) -> None:
    """consumers.store.lease.Lease: one evaluator at a time; when the holder stops renewing,
    the other takes over after the TTL and carries the alert on without firing it again."""
    from consumers.store.lease import Lease

    seconds = [1000.0]
    clock = Clock()
    lease_a = Lease(store.engine, "rule-evaluation", "a", 30, clock=lambda: seconds[0])
    lease_b = Lease(store.engine, "rule-evaluation", "b", 30, clock=lambda: seconds[0])
    a = scheduler(store, FAILURES, clock, lease_a)
    b = scheduler(store, FAILURES, clock, lease_b)
    assert a.run_once().leader
    assert not b.run_once().leader
    store.write_batch([event(i, f"r{i}", "Failed") for i in range(3)])
    clock.at(3)
    assert a.run_once().alerts == 1
    seconds[0] += 10
    assert not b.run_once().leader  # a's lease still runs
    seconds[0] += 31  # a died: its lease expired
    clock.at(4)
    cycle = b.run_once()
    assert cycle.leader and cycle.warmed_up and cycle.alerts == 0
    assert not a.run_once().leader
    clock.at(15.5)
    b.run_once()
    clock.at(16.5)
    assert b.run_once().alerts == 1
    assert [s for _, s, _ in summaries(store)] == ["firing", "firing", "resolved"]
