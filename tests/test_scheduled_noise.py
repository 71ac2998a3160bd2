"""Scheduled alerts (threshold, absence, duration, tree roll-up) go through the same recorder
and noise policy as per-event alerts: silences, inhibition, routing and grouping apply to
them, on a real store with the real scheduler and dispatcher (issue 13: they skipped noise
control entirely)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.outbox.recorder import recording
from consumers.rules.engine import RuleSet
from consumers.service.scheduler import Scheduler
from consumers.store import Store
from consumers.store.outbox import Outbox
from consumers.store.silences import add_silence
from tests.conftest import wait_for
from tests.noise_harness import Bench, body
from tests.rulekit import SwitchLease, rules
from tests.servers import HttpServer


def scheduled(bench: Bench, text: str) -> tuple[Scheduler, RuleSet]:
    """The scheduler as `serve` builds it: the bench's receivers, clock and noise policy."""
    ruleset = RuleSet(rules(text))
    receivers = bench.settings.receivers
    scheduler = Scheduler(
        bench.store,
        lambda: ruleset,
        SwitchLease(),
        receiver_kinds=bench.kinds,
        resolved_receivers=frozenset(n for n, r in receivers.items() if r.send_resolved),
        clock=bench.clock,
        on_notified=bench.dispatcher.wake,
        noise=bench.policy,
    )
    return scheduler, ruleset


def ev(bench: Bench, seconds: float, run: str, status: str, **columns: Any) -> RunStatusEvent:
    columns.setdefault("ExperimentName", "train")
    columns.setdefault("WorkspaceName", "ws-a")
    return RunStatusEvent.model_validate(
        {"TimeGenerated": bench.clock() + timedelta(seconds=seconds), "RunId": run}
        | {"Status": status}
        | columns
    )


def ingest(bench: Bench, ruleset: RuleSet, events: Sequence[RunStatusEvent]) -> None:
    """What the ingest path does: per-event rules, then events and alerts in one write."""
    alerts: list[Alert] = [a for event in events for a in ruleset.evaluate(event)]
    bench.store.write_batch(
        events, record=recording(alerts, bench.kinds, bench.policy), now=bench.clock()
    )


def rows(bench: Bench) -> list[tuple[str, str, str, str | None]]:
    """(rule, receiver, state, reason) of every notification."""
    return sorted((n.rule, n.receiver, n.state, n.reason) for n in bench.rows())


def nothing_due(store: Store, bench: Bench) -> bool:
    return Outbox(store).claim(bench.clock() + timedelta(hours=1), 100, 60) == []


THRESHOLD = """
rules:
  - name: failures
    when: {status: [Failed]}
    threshold: {value: 3, window: 15m, every: 1m, group_by: [WorkspaceName]}
    notify: [ok]
"""


def test_a_silence_suppresses_a_threshold_alert(store: Store, http: HttpServer) -> None:
    bench = Bench(store, {}, http=http)
    silence = add_silence(
        store,
        ["rule=failures", "WorkspaceName=ws-a"],
        duration_s=3600,
        comment="",
        now=bench.clock(),
    )
    run, _ = scheduled(bench, THRESHOLD)
    run.run_once()  # warm-up on an empty store
    store.write_batch([ev(bench, i, f"r{i}", "Failed") for i in range(3)])
    bench.clock.advance(120)
    assert run.run_once().alerts == 1
    assert rows(bench) == [("failures", "ok", "silenced", f"silence:{silence.id}")]
    assert bench.suppressed("silenced") == 1
    with bench:
        time.sleep(1.3)  # the dispatcher has claimed anything due by now
    assert http.hits == []


ABSENCE = """
rules:
  - name: stuck
    when: {experiment: train}
    absence: {limits: {Queued: 10m}, every: 1m}
    notify: [ok, mail]
"""


def test_a_silence_suppresses_an_absence_alert(store: Store) -> None:
    bench = Bench(store, {})
    silence = add_silence(store, ["run_id=stuck"], duration_s=3600, comment="", now=bench.clock())
    store.write_batch([ev(bench, 0, "stuck", "Queued")])
    run, _ = scheduled(bench, ABSENCE)
    bench.clock.advance(11 * 60)
    assert run.run_once().alerts == 1
    reason = f"silence:{silence.id}"
    assert rows(bench) == [
        ("stuck", "mail", "silenced", reason),
        ("stuck", "ok", "silenced", reason),
    ]
    assert nothing_due(store, bench)


TREE = """
rules:
  - name: step-failed
    when: {status: [Failed], where: "ParentRunId != null"}
    notify: [ok]
  - name: pipeline-failed
    when: {status: [Failed]}
    tree: {mode: rollup, wait: 1m, every: 10s}
    notify: [mail]
"""
ROLLUP_INHIBITS_STEPS = {
    "inhibit_rules": [
        {
            "name": "pipeline-rollup",
            "source_matchers": ["rule=pipeline-failed"],
            "target_matchers": ["rule=step-failed"],
            "equal": ["RootRunId"],
        }
    ]
}


def test_an_inhibition_fed_by_a_tree_rollup_mutes_its_childrens_alerts(store: Store) -> None:
    bench = Bench(store, ROLLUP_INHIBITS_STEPS)
    run, ruleset = scheduled(bench, TREE)
    run.run_once()
    tree = {"RootRunId": "pipe"}
    children = [ev(bench, 1, f"pipe.{i}", "Running", ParentRunId="pipe", **tree) for i in range(3)]
    other = ev(bench, 1, "other.0", "Running", ParentRunId="other", RootRunId="other")
    ingest(bench, ruleset, [ev(bench, 0, "pipe", "Running"), *children, other])
    ingest(bench, ruleset, [ev(bench, 10, "pipe.0", "Failed", ParentRunId="pipe", **tree)])
    bench.clock.advance(90)  # a minute after the first failed step: the roll-up fires
    assert run.run_once().alerts == 1
    bench.clock.advance(10)
    ingest(
        bench,
        ruleset,
        [
            ev(bench, 0, "pipe.1", "Failed", ParentRunId="pipe", **tree),
            ev(bench, 1, "pipe.2", "Failed", ParentRunId="pipe", **tree),
            ev(bench, 2, "other.0", "Failed", ParentRunId="other", RootRunId="other"),
        ],
    )
    [rollup] = [n for n in bench.rows() if n.rule == "pipeline-failed"]
    assert (rollup.receiver, rollup.state, rollup.alert["group"]) == (
        "mail",
        "pending",
        {"RootRunId": "pipe"},
    )
    steps = {n.run_id: (n.state, n.reason) for n in bench.rows() if n.rule == "step-failed"}
    assert steps == {
        "pipe.0": ("pending", None),  # before the roll-up: sent
        "pipe.1": ("inhibited", "inhibited:pipeline-rollup"),
        "pipe.2": ("inhibited", "inhibited:pipeline-rollup"),
        "other.0": ("pending", None),  # another tree
    }
    assert bench.suppressed("inhibited") == 2


DURATION = """
rules:
  - name: too-long
    when: {experiment: train}
    duration: {max: 1h, every: 1m}
    notify: [mail]
"""
ROUTE_LONG_RUNS = {"route": {"routes": [{"matchers": ["rule=too-long"], "receiver": "pager"}]}}


def test_routing_sends_a_duration_alert_to_the_routed_receiver(
    store: Store, http: HttpServer
) -> None:
    bench = Bench(store, ROUTE_LONG_RUNS, http=http)
    store.write_batch([ev(bench, 0, "long", "Running")])
    run, _ = scheduled(bench, DURATION)
    bench.clock.advance(61 * 60)
    assert run.run_once().alerts == 1
    assert rows(bench) == [
        ("too-long", "mail", "pending", None),
        ("too-long", "pager", "pending", None),
    ]
    with bench:
        wait_for(lambda: len(http.on("/pager")) == 1, timeout=10)
    hook = body(http.on("/pager")[0])
    assert hook["alert"]["rule"] == "too-long" and hook["event"]["RunId"] == "long"


GROUPED = """
rules:
  - name: failures
    when: {status: [Failed]}
    threshold: {value: 2, window: 15m, every: 1m, group_by: [WorkspaceName]}
    notify: [ok]
"""
GROUP_BY_RULE = {"defaults": {"group_by": ["rule"], "group_wait": "30s"}}


def test_grouping_bundles_scheduled_alerts_into_one_digest(store: Store, http: HttpServer) -> None:
    bench = Bench(store, GROUP_BY_RULE, http=http)
    run, _ = scheduled(bench, GROUPED)
    run.run_once()
    store.write_batch(
        [ev(bench, i, f"a{i}", "Failed") for i in range(2)]
        + [ev(bench, i, f"b{i}", "Failed", WorkspaceName="ws-b") for i in range(2)]
    )
    bench.clock.advance(120)
    assert run.run_once().alerts == 2  # one per workspace
    notes = bench.rows()
    assert len({n.group_key for n in notes}) == 1 and notes[0].group_key is not None
    assert {n.next_attempt_at for n in notes} == {bench.clock() + timedelta(seconds=30)}
    with bench:
        time.sleep(1.3)
        assert http.hits == []  # group_wait
        bench.advance(31)
        wait_for(lambda: len(http.hits) == 1, timeout=10)
        time.sleep(1.3)
    assert len(http.hits) == 1
    digest = body(http.hits[0])
    assert digest["type"] == "digest" and digest["group"]["labels"] == {"rule": "failures"}
    summaries = sorted(a["alert"]["summary"] for a in digest["alerts"])
    assert summaries == [
        "failures: 2 events in 15m in WorkspaceName=ws-a (>= 2)",
        "failures: 2 events in 15m in WorkspaceName=ws-b (>= 2)",
    ]
