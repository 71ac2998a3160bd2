"""Issue 12, rule evaluation: no rule can stop the service (case 3) and the run tracker's
memory is bounded by what the rules read, not by the events' size (case 6)."""

from __future__ import annotations

import gc
import logging
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import jmespath
import pytest
from prometheus_client import CollectorRegistry

from consumers.rules.engine import ALIASES, RuleSet
from consumers.rules.evaluation import Evaluation
from consumers.rules.guard import RuleGuard
from consumers.rules.kinds import BUILDERS
from consumers.rules.model import KINDS as KIND_NAMES
from consumers.rules.reads import Reads, reads_of
from consumers.service.reload import RuleWatcher
from consumers.service.scheduler import Scheduler
from consumers.store import Store
from consumers.telemetry.metrics import Metrics
from tests.rulekit import KINDS, T0, Clock, SwitchLease, event, notes, rules

POISONED = "floor(to_number(properties.loss)) > `5`"

PER_EVENT = f"""
rules:
  - name: big-loss
    when: {{where: "{POISONED}"}}
    notify: [chat]
  - name: run-failed
    when: {{status: [Failed]}}
    notify: [oncall]
"""

SCHEDULED = f"""
rules:
  - name: loss-spikes
    when: {{where: "{POISONED}"}}
    threshold: {{value: 1, window: 15m, every: 1m}}
    notify: [chat]
  - name: many-failures
    when: {{status: [Failed]}}
    threshold: {{value: 2, window: 15m, every: 1m}}
    notify: [chat]
  - name: stuck
    when: {{where: "{POISONED}"}}
    absence: {{limits: {{Running: 10m}}, every: 1m}}
    notify: [chat]
"""


def test_case3_a_raising_where_is_a_counted_error_and_other_rules_still_match() -> None:
    ruleset = RuleSet(rules(PER_EVENT))
    for loss in ("1e999", "nan", "-1e999"):
        poison = event(0, "r1", "Failed", Properties={"loss": loss})
        assert [a.rule for a in ruleset.evaluate(poison)] == ["run-failed"]
    big = event(0, "r2", "Failed", Properties={"loss": "7"})
    assert [a.rule for a in ruleset.evaluate(big)] == ["big-loss", "run-failed"]
    assert ruleset.guard.errors == {"big-loss": 3}


def test_case3_a_raising_scheduled_rule_leaves_the_others_evaluated(store: Store) -> None:
    clock = Clock()
    ruleset = RuleSet(rules(SCHEDULED))
    run = Scheduler(store, lambda: ruleset, SwitchLease(), receiver_kinds=KINDS, clock=clock)
    run.run_once()
    store.write_batch(
        [
            event(0, "poison", "Failed", Properties={"loss": "1e999"}),
            event(0, "hung", "Running", Properties={"loss": "1e999"}),
            event(1, "big", "Failed", Properties={"loss": "7"}),
            event(1, "slow", "Running", Properties={"loss": "9"}),
        ]
    )
    clock.at(2)
    assert run.run_once().alerts == 2  # loss-spikes ("big") and many-failures
    clock.at(12)
    assert run.run_once().alerts == 1  # "slow" is stuck; "hung" cannot be judged
    assert sorted(n.alert["rule"] for n in notes(store)) == [
        "loss-spikes",
        "many-failures",
        "stuck",
    ]
    assert ruleset.guard.errors["loss-spikes"] == 2  # each poisoned event once
    assert ruleset.guard.errors["stuck"] >= 1


def _retained_by_absence_rule(runs: int, tag_bytes: int) -> int:
    """Bytes the scheduled evaluation holds after `runs` Running runs with huge tags."""
    evaluation = Evaluation(
        rules(
            """
rules:
  - name: stuck
    when: {where: "tags.team == 'vision'"}
    absence: {limits: {Running: 1h}}
    notify: [chat]
"""
        )
    )
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(runs):
            tags = {"team": "vision", "blob": f"{i:06d}" + "x" * tag_bytes}
            evaluation.observe(event(0, f"run-{i}", "Running", Tags=tags))
            del tags
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        assert len(evaluation.runs.active) == runs


def test_case6_tracker_keeps_what_the_rules_read_not_the_whole_event() -> None:
    held = _retained_by_absence_rule(200, 1_000_000)
    assert held < 5_000_000, f"200 runs x 1 MB tags: {held / 1e6:.1f} MB held"


# --- the boundary itself -----------------------------------------------------------------


def test_guard_counts_every_error_and_logs_once_per_rule_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    counted: list[str] = []
    guard = RuleGuard(counted.append, log_every_s=300, clock=lambda: now[0])

    def boom(value: str) -> int:
        raise OverflowError(f"no {value}")

    with caplog.at_level(logging.WARNING, logger="consumers.rules.guard"):
        for _ in range(1000):
            assert guard.call("a", boom, "x") is None
        assert guard.call(("a", "b"), boom, "y") is None
        now[0] = 301.0
        guard.call("a", boom, "z")
        assert guard.call("a", lambda v: v * 2, 21) == 42
    assert guard.errors == {"a": 1002, "b": 1}
    assert counted.count("a") == 1002 and counted.count("b") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # a (first), b (first), a again after the interval
    assert "OverflowError: no x" in lines[0] and caplog.records[0].exc_info is not None
    assert "1001 more errors in the last 301s; latest OverflowError: no z" in lines[2]


def test_rule_errors_reach_the_metric_across_reloads(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(PER_EVENT)
    metrics = Metrics(CollectorRegistry())
    watcher = RuleWatcher(tmp_path, metrics)
    assert watcher.reload()
    watcher.current.evaluate(event(0, "r1", "Failed", Properties={"loss": "1e999"}))
    assert watcher.reload()  # a new rule set, the same boundary
    watcher.current.evaluate(event(0, "r1", "Failed", Properties={"loss": "nan"}))
    sample = metrics.registry.get_sample_value
    assert sample("runwatch_rule_errors_total", {"rule": "big-loss"}) == 2
    assert sample("runwatch_rule_errors_total", {"rule": "run-failed"}) is None


def test_every_scheduled_kind_is_dispatched_through_the_boundary() -> None:
    assert set(BUILDERS) == set(KIND_NAMES)
    evaluation = Evaluation(rules(SCHEDULED))
    assert [k.rule.name for k in evaluation.kinds] == ["loss-spikes", "many-failures", "stuck"]


def test_a_tick_where_one_rule_raises_still_evaluates_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evaluation = Evaluation(rules(SCHEDULED))
    broken = evaluation.kinds[0]

    def bug(now: datetime) -> list[object]:
        raise KeyError("a bug in a kind")

    monkeypatch.setattr(broken, "evaluate", bug)
    evaluation.observe_all([event(0, "a", "Failed"), event(0, "b", "Failed")])
    alerts = evaluation.evaluate(T0 + timedelta(minutes=1))
    assert [a.rule for a in alerts] == ["many-failures"]
    # Two events without a loss (floor(null) raises) and the tick's bug.
    assert evaluation.guard.errors == {"loss-spikes": 3}


# --- what the run tracker keeps ----------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "everything", "columns", "keys"),
    [
        ("tags.team == 'a'", False, set(), {"Tags": {"team"}}),
        ('Tags."my key" && properties.o', False, set(), {"Tags": {"my key"}, "Properties": {"o"}}),
        ("contains(Message, 'CUDA')", False, {"Message"}, {}),
        ("tags.a.b", False, set(), {"Tags": {"a"}}),
        ("length(tags) > `1`", False, {"Tags"}, {}),
        ("keys(properties)", False, {"Properties"}, {}),
        ("tags.*", False, {"Tags"}, {}),
        ("tags | team", False, {"Tags"}, {}),
        ("sort_by(tags.list, &name)[0].x", False, set(), {"Tags": {"list"}}),
        ("contains(keys(@), 'x')", True, set(), {}),
        ("*.team", True, set(), {}),
        ("[?team]", True, set(), {}),
    ],
)
def test_what_a_where_reads(
    where: str, everything: bool, columns: set[str], keys: dict[str, set[str]]
) -> None:
    reads = reads_of(jmespath.compile(where).parsed, ALIASES)
    assert reads.everything == everything
    if not everything:
        assert reads.columns == columns
        assert {k: set(v) for k, v in reads.keys.items()} == keys


def test_a_cut_event_keeps_identity_and_what_is_read() -> None:
    reads = Reads(columns=frozenset({"Message"}), keys={"Tags": frozenset({"team", "gone"})})
    full = event(
        0,
        "r",
        "Running",
        Tags={"team": "a", "blob": "x" * 1000},
        Properties={"p": "1"},
        Message="m",
        ResultDescription="long text",
        TriggeringUserName="alice",
    )
    cut = reads.cut(full)
    assert cut.Tags == {"team": "a"} and cut.Properties == {} and cut.Message == "m"
    assert cut.ResultDescription is None
    assert (cut.RunId, cut.Status, cut.ExperimentName, cut.TriggeringUserName) == (
        "r",
        "Running",
        "train",
        "alice",
    )
    assert Reads(everything=True).cut(full) is full
    small = event(0, "r", "Running")
    assert reads.cut(small) is small  # nothing to drop: no copy


ABSENCE = """
rules:
  - name: stuck
    when: {where: "tags.team == 'vision'"}
    absence: {limits: {Running: 1h}, every: 1m}
    notify: [chat]
"""


def test_the_alert_about_a_cut_run_carries_its_full_tags(store: Store) -> None:
    clock = Clock()
    ruleset = RuleSet(rules(ABSENCE))
    run = Scheduler(store, lambda: ruleset, SwitchLease(), receiver_kinds=KINDS, clock=clock)
    run.run_once()
    tags = {"team": "vision", "blob": "y" * 100_000}
    store.write_batch([event(0, "big", "Running", Tags=tags, Properties={"owner": "bo"})])
    clock.at(1)
    run.run_once()
    evaluation = run.evaluation
    assert evaluation is not None
    assert evaluation.runs.active["big"].event.Tags == {"team": "vision"}
    clock.at(62)
    assert run.run_once().alerts == 1
    [note] = notes(store)
    assert note.alert["event"]["Tags"] == tags
    assert note.alert["event"]["Properties"] == {"owner": "bo"}


def test_the_cap_evicts_the_least_recently_changed_run_and_keeps_its_alert_firing() -> None:
    evicted: list[str] = []
    evaluation = Evaluation(rules(ABSENCE), max_runs=2, on_evict=evicted.append)
    team = {"Tags": {"team": "vision"}}
    evaluation.observe(event(0, "stuck", "Running", **team))
    evaluation.observe(event(1, "b", "Running", **team))
    [alert] = evaluation.evaluate(T0 + timedelta(minutes=61))
    assert alert.event.RunId == "stuck" and alert.status == "firing"
    evaluation.observe(event(62, "b", "Running", **team))  # no change of status: still b
    evaluation.observe(event(63, "c", "Running", **team))  # over the cap: "stuck" goes
    assert list(evaluation.runs.active) == ["b", "c"]
    assert evicted == ["run"] and evaluation.runs.evictions == {"run": 1}
    # Forgotten is not resolved: the firing alert stays firing while the run is evicted...
    later = evaluation.evaluate(T0 + timedelta(minutes=70))
    assert [(a.event.RunId, a.status) for a in later] == [("b", "firing")]  # b is stuck now
    assert sorted(evaluation.instances.firing("stuck")) == ["b", "stuck"]
    # ... and its next event brings it back: ended, so the alert resolves.
    evaluation.observe(event(71, "stuck", "Completed", **team))
    [resolved] = evaluation.evaluate(T0 + timedelta(minutes=72))
    assert (resolved.event.RunId, resolved.status) == ("stuck", "resolved")


def test_tree_children_are_capped_too() -> None:
    evaluation = Evaluation(
        rules(
            """
rules:
  - name: pipeline
    when: {status: [Failed]}
    tree: {mode: rollup, wait: 10m}
    notify: [chat]
"""
        ),
        max_runs=3,
    )
    for root in ("p1", "p2"):
        for i in range(2):
            child = {"ParentRunId": root, "RootRunId": root, "Tags": {"step": f"s{i}", "x": "y"}}
            evaluation.observe(event(i, f"{root}.{i}", "Failed", **child))
    assert list(evaluation.runs.trees) == ["p2"] and evaluation.runs.tree_runs == 2
    assert evaluation.runs.evictions == {"tree": 1}
    assert evaluation.runs.trees["p2"].children["p2.0"].Tags == {"step": "s0"}
