"""`runwatch rules test FILE --since 7d`: what rules would have raised over the stored
history, sending nothing.

The stored events are replayed in time order through the same code the service runs:
per-event rules on each event, the scheduled kinds (`Evaluation`) on a simulated clock that
ticks through the period at the finest evaluation interval. The window counts and flatline
clocks start warm (the window before `--since` is read first); runs that started before
`--since` are not known to absence, duration and roll-up rules. Per-event throttling is
simulated; noise control (grouping, silences, inhibition) is not applied here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from consumers.model.alerts import Alert
from consumers.rules.engine import RuleSet
from consumers.rules.evaluation import Evaluation
from consumers.rules.model import Rule
from consumers.store.engine import Store
from consumers.store.feed import baseline_loader, earliest_event, events_between


@dataclass(frozen=True, slots=True)
class WouldNotify:
    receiver: str
    outcome: str  # "send", "throttled", "unknown receiver"


@dataclass(frozen=True, slots=True)
class WouldAlert:
    at: datetime
    alert: Alert
    notifications: tuple[WouldNotify, ...]

    def describe(self) -> str:
        alert = self.alert
        what = alert.summary or (
            f"{alert.event.Status}: {alert.event.RunId}"
            + (f" in {alert.event.ExperimentName}" if alert.event.ExperimentName else "")
        )
        return f"{self.at:%Y-%m-%d %H:%M:%S} UTC  {alert.status.upper():8} {alert.rule}  {what}"

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "rule": self.alert.rule,
            "kind": self.alert.kind,
            "status": self.alert.status,
            "summary": self.alert.summary,
            "run_id": self.alert.event.RunId,
            "event_status": self.alert.event.Status,
            "group": self.alert.group,
            "value": self.alert.value,
            "notifications": [
                {"receiver": n.receiver, "outcome": n.outcome} for n in self.notifications
            ],
        }


@dataclass(slots=True)
class DryRun:
    since: datetime
    until: datetime
    events: int = 0
    alerts: list[WouldAlert] = field(default_factory=list)
    rule_errors: dict[str, int] = field(default_factory=dict)  # rule -> events/ticks it failed

    @property
    def sent(self) -> int:
        return sum(1 for a in self.alerts for n in a.notifications if n.outcome == "send")

    @property
    def throttled(self) -> int:
        return sum(1 for a in self.alerts for n in a.notifications if n.outcome == "throttled")


class _Throttle:
    """The outbox's per-event throttle, on the simulated clock."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str, str], datetime] = {}

    def outcome(self, alert: Alert, receiver: str, at: datetime) -> str:
        if alert.throttle_s <= 0:
            return "send"
        key = (alert.rule, alert.throttle_key, receiver)
        last = self.last.get(key)
        if last is not None and (at - last).total_seconds() < alert.throttle_s:
            return "throttled"
        self.last[key] = at
        return "send"


def dry_run(
    store: Store,
    rules: Iterable[Rule],
    *,
    since: datetime,
    until: datetime,
    receivers: Collection[str] | None = None,
    resolved_receivers: Collection[str] = (),
) -> DryRun:
    rules = list(rules)
    per_event = RuleSet(rules)
    evaluation = Evaluation(
        rules,
        resolved_receivers=resolved_receivers,
        baseline=baseline_loader(store, ended_before=since),
        guard=per_event.guard,
    )
    result = DryRun(since, until)
    throttle = _Throttle()

    def record(alerts: Iterable[Alert], at: datetime) -> None:
        for alert in alerts:
            notes = []
            for receiver in alert.receivers:
                if receivers is not None and receiver not in receivers:
                    notes.append(WouldNotify(receiver, "unknown receiver"))
                else:
                    notes.append(WouldNotify(receiver, throttle.outcome(alert, receiver, at)))
            result.alerts.append(WouldAlert(at, alert, tuple(notes)))

    window = evaluation.longest_window
    if evaluation and window > 0:
        for event in events_between(store, since - timedelta(seconds=window), since):
            evaluation.observe(event, runs=False)
    earliest = earliest_event(store)
    history_start = since - timedelta(seconds=window)
    evaluation.start_watching(max(earliest, history_start) if earliest else since)
    tick = timedelta(seconds=evaluation.tick)
    clock = since
    for event in events_between(store, since, until):
        result.events += 1
        while evaluation and clock <= event.TimeGenerated:
            record(evaluation.evaluate(clock), clock)
            clock += tick
        evaluation.observe(event)
        record(per_event.evaluate(event), event.TimeGenerated)
    while evaluation and clock <= until:
        record(evaluation.evaluate(clock), clock)
        clock += tick
    result.rule_errors = dict(sorted(per_event.guard.errors.items()))
    return result


def render(result: DryRun) -> str:
    lines = [
        f"rules test: {result.events} events from {result.since:%Y-%m-%d %H:%M} to "
        f"{result.until:%Y-%m-%d %H:%M} UTC (nothing is sent)"
    ]
    for would in result.alerts:
        lines.append(would.describe())
        for note in would.notifications:
            lines.append(f"    -> {note.receiver}: {note.outcome}")
        if not would.notifications:
            lines.append("    -> no receiver (resolved notifications are opt-in)")
    for rule, count in result.rule_errors.items():
        lines.append(
            f"rule {rule} failed on {count} event(s) or evaluation(s) and was skipped for them "
            "(the log says why)"
        )
    lines.append(
        f"{len(result.alerts)} alert(s); {result.sent} notification(s) would have been sent, "
        f"{result.throttled} throttled"
    )
    return "\n".join(lines)
