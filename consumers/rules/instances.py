"""Stateful alert instances: what turns "breached now" into one firing and one resolution.

Each scheduled rule reports, per evaluation, a `Finding` for every group that breached (and,
for thresholds, for every group it judged). Per (rule, group) the last `periods` results are
kept; the instance fires when `breaches` of them breached, and resolves after
`resolve_after` clear evaluations in a row. A firing is an alert with status "firing"; its
resolution reuses it with status "resolved", sent only to receivers that opted in
(`send_resolved: true`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.model.instances import InstanceState
from consumers.rules.model import Rule

Key = tuple[str, str]  # (rule, group key)
# The full event for an alert about to fire, when the one kept in memory was cut down.
Describe = Callable[[RunStatusEvent], RunStatusEvent]


@dataclass(frozen=True, slots=True)
class Finding:
    """One group's result of one evaluation."""

    group_key: str
    breached: bool
    event: RunStatusEvent | None  # the event that best explains it (None if not breached)
    summary: str = ""
    group: Mapping[str, str] = field(default_factory=dict)
    value: float | None = None
    details: tuple[dict[str, Any], ...] = ()


def _episode(rule: str, group_key: str, since: datetime) -> str:
    text = "\x1f".join((rule, group_key, since.isoformat()))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Instances:
    """All instance states of all scheduled rules, and the changes not yet saved."""

    def __init__(
        self,
        states: Mapping[Key, InstanceState] | None = None,
        resolved_receivers: Iterable[str] = (),
    ) -> None:
        self.by_rule: dict[str, dict[str, InstanceState]] = {}
        for (rule, group_key), state in (states or {}).items():
            self.by_rule.setdefault(rule, {})[group_key] = state
        self.changed: dict[Key, InstanceState | None] = {}
        self.resolved_receivers = frozenset(resolved_receivers)

    def firing(self, rule: str) -> list[str]:
        return [g for g, s in self.by_rule.get(rule, {}).items() if s.firing]

    def get(self, rule: str, group_key: str) -> InstanceState | None:
        return self.by_rule.get(rule, {}).get(group_key)

    def take_changes(self) -> dict[Key, InstanceState | None]:
        changed, self.changed = self.changed, {}
        return changed

    def step(
        self,
        rule: Rule,
        findings: Iterable[Finding],
        now: datetime,
        *,
        periods: int = 1,
        breaches: int = 1,
        resolve_after: int = 1,
        describe: Describe | None = None,
    ) -> list[Alert]:
        """Apply one evaluation of `rule`. Groups with no finding count as clear. A breached
        finding without an event keeps a firing instance firing and never fires one (a run
        that can no longer be judged)."""
        alerts: list[Alert] = []
        seen: set[str] = set()
        for finding in findings:
            seen.add(finding.group_key)
            alert = self._one(rule, finding, now, periods, breaches, resolve_after, describe)
            if alert is not None:
                alerts.append(alert)
        for group_key in list(self.by_rule.get(rule.name, {})):
            if group_key not in seen:
                clear = Finding(group_key, False, None)
                alert = self._one(rule, clear, now, periods, breaches, resolve_after, None)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _one(
        self,
        rule: Rule,
        finding: Finding,
        now: datetime,
        periods: int,
        breaches: int,
        resolve_after: int,
        describe: Describe | None,
    ) -> Alert | None:
        key = (rule.name, finding.group_key)
        mine = self.by_rule.setdefault(rule.name, {})
        state = mine.get(finding.group_key)
        if state is None:
            if not finding.breached:
                return None
            state = InstanceState()
        history = (state.history + ("1" if finding.breached else "0"))[-periods:]
        state.history = history
        alert: Alert | None = None
        if not state.firing:
            if history.count("1") >= breaches and finding.event is not None:
                instance = _episode(rule.name, finding.group_key, now)
                event = finding.event if describe is None else describe(finding.event)
                alert = self._alert(rule, finding, event, instance)  # before any state changes
                state.firing, state.clear, state.since = True, 0, now
                state.instance = instance
                state.alert = alert.model_dump(mode="json")
        elif finding.breached:
            state.clear = 0
        else:
            state.clear += 1
            if state.clear >= resolve_after:
                alert = self._resolution(state)
                state.firing, state.clear, state.history = False, 0, ""
                state.instance, state.since, state.alert = None, None, None
        if state.worth_keeping:
            mine[finding.group_key] = state
            self.changed[key] = state
        elif finding.group_key in mine:
            del mine[finding.group_key]
            self.changed[key] = None
        return alert

    def _alert(self, rule: Rule, finding: Finding, event: RunStatusEvent, instance: str) -> Alert:
        return Alert(
            rule=rule.name,
            severity=rule.severity,
            labels=rule.labels,
            annotations=rule.annotations,
            receivers=rule.notify,
            throttle_key=finding.group_key,
            throttle_s=0.0,
            event=event,
            kind=rule.kind,
            instance=instance,
            summary=finding.summary,
            group=dict(finding.group),
            value=finding.value,
            details=finding.details,
        )

    def _resolution(self, state: InstanceState) -> Alert | None:
        if state.alert is None:
            return None
        firing = Alert.model_validate(state.alert)
        receivers = tuple(r for r in firing.receivers if r in self.resolved_receivers)
        return firing.model_copy(
            update={
                "status": "resolved",
                "receivers": receivers,
                "summary": f"resolved: {firing.summary}" if firing.summary else "resolved",
            }
        )

    def forget_rules_except(self, names: Iterable[str]) -> None:
        keep = set(names)
        for rule in [r for r in self.by_rule if r not in keep]:
            for group_key in self.by_rule.pop(rule):
                self.changed[(rule, group_key)] = None
