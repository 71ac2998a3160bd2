"""Threshold rules: a count, or a ratio, of matching events in a sliding window, per group.

Incremental: each event is added once to a time bucket of its group (buckets are 1/60 of
the window, at least a second: the window's trailing edge is exact to that), and buckets
leave the running totals as the window slides past them. An evaluation therefore costs the
number of groups, never the size of the history, and late events land in the bucket of
their own TimeGenerated.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Any

from consumers.model.events import RunStatusEvent
from consumers.rules.engine import Matcher
from consumers.rules.guard import RuleGuard
from consumers.rules.instances import Finding
from consumers.rules.model import Rule, ThresholdSpec
from consumers.rules.windows import ExampleRefs, WindowStateError, example

COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def group_values(event: RunStatusEvent, columns: tuple[str, ...]) -> dict[str, str]:
    """`WorkspaceName`, `Tags.team`, `Properties.owner` -> their values ("" when absent)."""
    values: dict[str, str] = {}
    for column in columns:
        head, dot, key = column.partition(".")
        if dot:
            labels: dict[str, Any] = getattr(event, head)
            value = labels.get(key)
        else:
            value = getattr(event, column)
        values[column] = "" if value is None else str(value)
    return values


def group_key(values: dict[str, str]) -> str:
    return "|".join(f"{k}={v}" for k, v in values.items())


@dataclass(slots=True)
class _Group:
    values: dict[str, str]
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket -> [num, den]
    heap: list[int] = field(default_factory=list)
    num: int = 0
    den: int = 0
    last: RunStatusEvent | None = None  # the latest numerator event: the alert's example
    seen: RunStatusEvent | None = None  # the latest of any (for "fewer than" rules)


class ThresholdCounter:
    """One threshold rule's sliding-window counts."""

    def __init__(self, rule: Rule, guard: RuleGuard) -> None:
        assert rule.threshold is not None
        self.rule = rule
        self.spec: ThresholdSpec = rule.threshold
        self.numerator = Matcher.compile(rule, guard=guard)
        self.denominator = (
            Matcher.compile(rule, self.spec.of, guard=guard) if self.spec.of is not None else None
        )
        self.bucket_s = max(1.0, self.spec.window / 60)
        self.groups: dict[str, _Group] = {}
        self.dirty = True  # changed since the state was last taken (`dump`) or loaded

    def observe(
        self,
        event: RunStatusEvent,
        num: bool,
        den: bool,
        grouped: tuple[str, dict[str, str]] | None = None,
    ) -> None:
        """`num` / `den`: whether the event matched the rule's filter / the ratio's `of`;
        `grouped`: the event's group key and values, if the caller has them already."""
        if grouped is None:
            values = group_values(event, self.spec.group_by)
            key = group_key(values)
        else:
            key, values = grouped
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(values)
        self.dirty = True
        bucket = int(event.TimeGenerated.timestamp() // self.bucket_s)
        counts = group.buckets.get(bucket)
        if counts is None:
            counts = group.buckets[bucket] = [0, 0]
            heapq.heappush(group.heap, bucket)
        if group.seen is None or event.TimeGenerated >= group.seen.TimeGenerated:
            group.seen = event
        if num:
            counts[0] += 1
            group.num += 1
            if group.last is None or event.TimeGenerated >= group.last.TimeGenerated:
                group.last = event
        if den:
            counts[1] += 1
            group.den += 1

    def dump(self, examples: ExampleRefs) -> dict[str, Any]:
        """The counts as data (consumers.rules.windows): per group its values, its buckets
        as three lists (bucket numbers, numerator and denominator counts: small integers
        and three lists are far cheaper to write and read than a pair per bucket), and the
        numbers of its latest numerator event and latest event of any kind. Buckets the
        window has left go when the state is next evaluated, as they would have."""
        groups = []
        for key, g in self.groups.items():
            counts = g.buckets.values()
            groups.append(
                [
                    key,
                    g.values,
                    list(g.buckets),
                    [c[0] for c in counts],
                    [c[1] for c in counts],
                    examples.ref(g.last),
                    examples.ref(g.seen),
                ]
            )
        return {"bucket_s": self.bucket_s, "groups": groups}

    def load(self, state: dict[str, Any], events: list[RunStatusEvent]) -> None:
        """The counts `dump` gave (`events`: its examples, fetched); raises
        WindowStateError (or a TypeError, ValueError or KeyError) on a state it cannot
        take, leaving the counter as it was."""
        if state.get("bucket_s") != self.bucket_s:
            raise WindowStateError("buckets of another size")
        groups: dict[str, _Group] = {}
        for key, values, buckets, nums, dens, last, seen in state["groups"]:
            if not (
                isinstance(values, dict)
                and len(buckets) == len(nums) == len(dens)
                and set(map(type, chain(buckets, nums, dens))) <= {int}  # not bool, not float
                and min(nums, default=0) >= 0 <= min(dens, default=0)
            ):
                raise WindowStateError(f"group {key!r} is damaged")
            group = _Group({str(k): str(v) for k, v in values.items()})
            group.buckets = dict(zip(buckets, map(list, zip(nums, dens, strict=True)), strict=True))
            if len(group.buckets) != len(buckets):
                raise WindowStateError(f"group {key!r}: a bucket twice")
            group.num, group.den = sum(nums), sum(dens)
            group.heap = sorted(group.buckets)
            group.last, group.seen = example(events, last), example(events, seen)
            groups[str(key)] = group
        self.groups = groups
        self.dirty = False

    def _slide(self, group: _Group, edge: int) -> None:
        while group.heap and group.heap[0] < edge:
            counts = group.buckets.pop(heapq.heappop(group.heap))
            group.num -= counts[0]
            group.den -= counts[1]

    def evaluate(self, now: datetime, firing: set[str]) -> list[Finding]:
        """A finding per group in the window (and per firing group, to resolve it)."""
        spec = self.spec
        edge = int((now.timestamp() - spec.window) // self.bucket_s) + 1
        compare = COMPARE[spec.op]
        findings: list[Finding] = []
        for key in list(self.groups):
            group = self.groups[key]
            self._slide(group, edge)
            if not group.buckets and key not in firing:
                del self.groups[key]
                continue
            if spec.measure == "ratio":
                if group.den < spec.min_events:
                    findings.append(Finding(key, False, None, group=group.values))
                    continue
                value = group.num / group.den
            else:
                value = float(group.num)
            breached = compare(value, spec.value)
            findings.append(
                Finding(
                    key,
                    breached,
                    (group.last or group.seen) if breached else None,
                    summary=self._summary(group, value) if breached else "",
                    group=group.values,
                    value=value,
                )
            )
        return findings

    def _summary(self, group: _Group, value: float) -> str:
        spec = self.spec
        where = ", ".join(f"{k}={v}" for k, v in group.values.items())
        window = _span(spec.window)
        if spec.measure == "ratio":
            measured = f"{group.num} of {group.den} ({value:.0%})"
            limit = f"{spec.op} {spec.value:.0%}" if spec.value <= 1 else f"{spec.op} {spec.value}"
        else:
            measured = f"{group.num} events"
            limit = f"{spec.op} {spec.value:g}"
        scope = f" in {where}" if where else ""
        return f"{self.rule.name}: {measured} in {window}{scope} ({limit})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
