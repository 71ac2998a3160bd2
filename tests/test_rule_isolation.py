"""Issue 12, rule evaluation: no rule can stop the service (case 3) and the run tracker's
memory is bounded by what the rules read, not by the events' size (case 6)."""

from __future__ import annotations

import gc
import tracemalloc

from consumers.rules.engine import RuleSet
from consumers.rules.scheduler import Scheduler
from consumers.store import Store
from tests.rulekit import KINDS, Clock, SwitchLease, event, notes, rules

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
    from consumers.rules.evaluation import Evaluation

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
