"""Matching events against rules. Every ingested event goes through `RuleSet.evaluate`, so the
work is done once, at construction: rules are bucketed by status (most events are Queued or
Running and no rule wants them: one dict lookup and out), globs become one regex per field,
JMESPath is compiled, and an event's JMESPath data is built only if a rule needs it.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath.visitor import TreeInterpreter

from consumers.alerts import Alert
from consumers.events import RunStatusEvent, Status
from consumers.model.labels import ALIASES
from consumers.rules.model import Rule, When

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode  # the stubs' name for a syntax tree

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class _Matcher:
    rule: Rule
    experiment: re.Pattern[str] | None
    workspace: re.Pattern[str] | None
    run_type: re.Pattern[str] | None
    where: _TreeNode | None  # the compiled expression's syntax tree
    statuses: frozenset[str] | None = None
    scope: str | None = None  # "child" or "root": tree rules evaluated per event

    @classmethod
    def compile(cls, rule: Rule, when: When | None = None) -> _Matcher:
        when = rule.when if when is None else when
        scope = None
        if rule.tree is not None:
            scope = "root" if rule.tree.mode == "root" else "child"
        return cls(
            rule,
            _glob_regex(when.experiment),
            _glob_regex(when.workspace),
            _glob_regex(when.run_type),
            jmespath.compile(when.where).parsed if when.where is not None else None,
            frozenset(when.status) if when.status is not None else None,
            scope,
        )

    def matches(self, event: RunStatusEvent) -> bool:
        """Every condition, status included (the scheduled kinds' filter)."""
        if self.statuses is not None and event.Status not in self.statuses:
            return False
        if not self.columns_match(event):
            return False
        if self.where is None:
            return True
        try:
            return _truthy(_INTERPRETER.visit(self.where, event_data(event)))
        except (ValueError, TypeError):
            return False

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
    `RuleWatcher`): readers on other threads then always see one consistent set."""

    __slots__ = ("_broken", "_by_status", "_receivers", "_rules")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules = tuple(rules)
        matchers = [
            _Matcher.compile(rule) for rule in self._rules if rule.enabled and rule.per_event
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
        self._broken: set[str] = set()  # rules whose `where` failed at run time (logged once)

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
        """The alerts `event` raises, one per matching enabled rule, in rule order."""
        candidates = self._by_status.get(event.Status)
        if candidates is None:
            return []
        alerts: list[Alert] = []
        data: dict[str, Any] | None = None
        for matcher in candidates:
            if not matcher.columns_match(event):
                continue
            if matcher.where is not None:
                if data is None:
                    data = event_data(event)
                if not self._where(matcher, matcher.where, data):
                    continue
            alerts.append(matcher.alert(event))
        return alerts

    def _where(self, matcher: _Matcher, where: _TreeNode, data: dict[str, Any]) -> bool:
        """An expression that fails on some event (a function given the wrong type) does not
        match it; the failure is logged once per rule, not once per event."""
        try:
            return _truthy(_INTERPRETER.visit(where, data))
        except (ValueError, TypeError) as exc:  # JMESPathError is a ValueError
            name = matcher.rule.name
            if name not in self._broken:
                self._broken.add(name)
                log.warning(
                    "rule %r: where expression failed, treating as no match: %s",
                    name,
                    exc,
                    extra={"rule": name},
                )
            return False
