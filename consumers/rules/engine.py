"""Matching events against rules. Every ingested event goes through `RuleSet.evaluate`, so the
work is done once, at construction: rules are bucketed by status (most events are Queued or
Running and no rule wants them: one dict lookup and out), globs become one regex per field,
JMESPath is compiled, and an event's JMESPath data is built only if a rule needs it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath.visitor import TreeInterpreter

from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent, Status
from consumers.model.labels import ALIASES
from consumers.rules.guard import RuleGuard
from consumers.rules.model import Rule, When
from consumers.rules.reads import Reads, reads_of

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode  # the stubs' name for a syntax tree


def event_data(event: RunStatusEvent) -> dict[str, Any]:
    """What a `where:` expression sees: the event's columns as JSON plus their lower-case
    aliases (consumers/model/labels.py: `tags`, `workspace`, `user`, ...)."""
    data = event.model_dump(mode="json")
    for alias, column in ALIASES.items():
        data[alias] = data[column]
    return data


# `ParsedResult.search` builds an interpreter per call (a third of a short expression's
# cost); its only state is a method cache, so one shared instance is safe across threads.
_INTERPRETER = TreeInterpreter()


def _glob_regex(patterns: tuple[str, ...] | None) -> re.Pattern[str] | None:
    """fnmatch semantics, but case-sensitive on every platform and compiled once."""
    if patterns is None:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def single_name(patterns: tuple[str, ...] | None) -> str | None:
    """The one name these globs match, if they are one pattern without wildcards."""
    if patterns is None or len(patterns) != 1 or any(c in patterns[0] for c in "*?["):
        return None
    return patterns[0]


def _truthy(value: Any) -> bool:
    """JMESPath truth: null, false and empty strings, lists and objects are false; 0 is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class EventData:
    """An event's JMESPath data, built on first use and shared by the rules evaluating it."""

    __slots__ = ("_data", "event")

    def __init__(self, event: RunStatusEvent) -> None:
        self.event = event
        self._data: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        if self._data is None:
            self._data = event_data(self.event)
        return self._data


@dataclass(frozen=True, slots=True)
class _Matcher:
    rule: Rule
    guard: RuleGuard  # where a condition that raises on an event is counted
    experiment: re.Pattern[str] | None
    workspace: re.Pattern[str] | None
    run_type: re.Pattern[str] | None
    where: _TreeNode | None  # the compiled expression's syntax tree
    statuses: frozenset[str] | None = None
    scope: str | None = None  # "child" or "root": tree rules evaluated per event
    cause: re.Pattern[str] | None = None

    @classmethod
    def compile(cls, rule: Rule, when: When | None = None, *, guard: RuleGuard) -> _Matcher:
        when = rule.when if when is None else when
        scope = None
        if rule.tree is not None:
            scope = "root" if rule.tree.mode == "root" else "child"
        return cls(
            rule,
            guard,
            _glob_regex(when.experiment),
            _glob_regex(when.workspace),
            _glob_regex(when.run_type),
            jmespath.compile(when.where).parsed if when.where is not None else None,
            frozenset(when.status) if when.status is not None else None,
            scope,
            _glob_regex(when.cause),
        )

    @property
    def reads(self) -> Reads:
        """What of an event these conditions read (the globs read identity columns)."""
        return reads_of(self.where, ALIASES)

    def matches(self, event: RunStatusEvent) -> bool:
        """Every condition, status included (the scheduled kinds' filter). A condition that
        raises on this event (`floor()` of "1e999") is the rule's error: counted, and the
        event does not match, so one odd run cannot stop a rule judging the others."""
        if self.statuses is not None and event.Status not in self.statuses:
            return False
        try:
            return self.holds(event, EventData(event))
        except Exception as exc:  # the boundary, per run: counted by the guard
            self.guard.failed(self.rule.name, exc)
            return False

    def accepts(self, event: RunStatusEvent, data: EventData) -> bool:
        """Every condition, status included; raises what they raise (for callers inside the
        guard's boundary, which count it)."""
        if self.statuses is not None and event.Status not in self.statuses:
            return False
        if not self.columns_match(event):  # inlined `holds`: every scheduled event passes here
            return False
        return self.where is None or _truthy(_INTERPRETER.visit(self.where, data.get()))

    def holds(self, event: RunStatusEvent, data: EventData) -> bool:
        """The conditions other than status; raises what they raise."""
        if not self.columns_match(event):
            return False
        return self.where is None or _truthy(_INTERPRETER.visit(self.where, data.get()))

    def check(self, event: RunStatusEvent, data: EventData) -> Alert | None:
        """The alert if the conditions other than status hold; raises what they raise."""
        return self.alert(event) if self.holds(event, data) else None

    def columns_match(self, event: RunStatusEvent) -> bool:
        """The glob conditions. A glob needs its column: a run without an experiment
        matches no `experiment:` glob, not even "*". Tree rules also need the run's place:
        a child (it has a parent) or a root."""
        if self.scope is not None and (event.ParentRunId is None) != (self.scope == "root"):
            return False
        for regex, value in (
            (self.experiment, event.ExperimentName),
            (self.workspace, event.WorkspaceName),
            (self.run_type, event.RunType),
            (self.cause, event.cause),
        ):
            if regex is not None and (value is None or regex.match(value) is None):
                return False
        return True

    def alert(self, event: RunStatusEvent) -> Alert:
        rule = self.rule
        throttle = rule.throttle
        return Alert(
            rule=rule.name,
            severity=rule.severity,
            labels=rule.labels,
            annotations=rule.annotations,
            receivers=rule.notify,
            throttle_key="|".join(f"{k}={_key_text(getattr(event, k))}" for k in throttle.key),
            throttle_s=throttle.for_,
            event=event,
            kind=rule.kind,
        )


Matcher = _Matcher  # the scheduled kinds filter events with the same compiled conditions


class RuleSet:
    """An immutable, compiled set of rules. Replace it whole to change rules (see
    `RuleWatcher`): readers on other threads then always see one consistent set.

    `guard` is the isolation boundary every rule's evaluation passes through (see
    consumers.rules.guard); the scheduled kinds of this set use the same one."""

    __slots__ = ("_by_status", "_receivers", "_rules", "guard")

    def __init__(self, rules: Iterable[Rule] = (), *, guard: RuleGuard | None = None) -> None:
        self._rules = tuple(rules)
        self.guard = guard if guard is not None else RuleGuard()
        matchers = [
            _Matcher.compile(rule, guard=self.guard)
            for rule in self._rules
            if rule.enabled and rule.per_event
        ]
        by_status: dict[str, tuple[_Matcher, ...]] = {}
        for status in Status:
            wanted = tuple(
                m
                for m in matchers
                if m.rule.when.status is None or status.value in m.rule.when.status
            )
            if wanted:
                by_status[status.value] = wanted
        self._by_status = by_status
        self._receivers = frozenset(r for m in matchers for r in m.rule.notify)

    @classmethod
    def empty(cls) -> RuleSet:
        return cls()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule loaded, disabled ones included, in file order."""
        return self._rules

    @property
    def receivers_used(self) -> frozenset[str]:
        """The receivers that enabled rules notify."""
        return self._receivers | frozenset(r for rule in self.scheduled for r in rule.notify)

    @property
    def scheduled(self) -> tuple[Rule, ...]:
        """The enabled rules the scheduler evaluates (threshold, absence, ...)."""
        return tuple(r for r in self._rules if r.enabled and not r.per_event)

    def __len__(self) -> int:
        return len(self._rules)

    def evaluate(self, event: RunStatusEvent) -> list[Alert]:
        """The alerts `event` raises, one per matching enabled rule, in rule order. Never
        raises: each rule runs inside the guard, and one that fails is skipped for this
        event while the others are evaluated."""
        candidates = self._by_status.get(event.Status)
        if candidates is None:
            return []
        alerts: list[Alert] = []
        data = EventData(event)
        for matcher in candidates:
            try:  # the isolation boundary (consumers.rules.guard), inline: the hot path
                alert = matcher.check(event, data)
            except Exception as exc:
                self.guard.failed(matcher.rule.name, exc)
                continue
            if alert is not None:
                alerts.append(alert)
        return alerts
