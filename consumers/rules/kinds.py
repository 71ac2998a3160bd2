"""The scheduled kinds behind one interface, so that `Evaluation` dispatches every rule the
same way: `observe` each event (if it counts events), `evaluate` when due, both through
the rule guard. A kind is added here (its class and a line in `BUILDERS`) and nowhere else;
the dispatch, and with it the isolation boundary, cannot be left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.rules.absence import Flatline, LastSeen, StuckRuns
from consumers.rules.durations import LongRuns
from consumers.rules.engine import EventData
from consumers.rules.guard import RuleGuard
from consumers.rules.instances import Describe, Finding, Instances
from consumers.rules.model import Rule
from consumers.rules.reads import Reads
from consumers.rules.threshold import ThresholdCounter, group_key, group_values
from consumers.rules.tracker import RunTracker
from consumers.rules.trees import READS as TREE_READS
from consumers.rules.trees import Rollup
from consumers.rules.windows import ExampleRefs


class Seen:
    """One event as the rules observing it share it: its JMESPath data, built once, and
    its group keys, computed once per set of group-by columns."""

    __slots__ = ("data", "event", "groups")

    def __init__(self, event: RunStatusEvent) -> None:
        self.event = event
        self.data = EventData(event)
        self.groups: dict[tuple[str, ...], tuple[str, dict[str, str]]] = {}


NOTHING: frozenset[str] = frozenset()


@dataclass(slots=True)
class Context:
    """What the kinds of one evaluation share."""

    instances: Instances
    runs: RunTracker
    guard: RuleGuard
    describe: Describe | None = None  # the full run for an alert about to fire
    horizon: timedelta | None = None  # replay safety (tree roll-ups)
    watching_since: datetime | None = None  # the start of the history judged (flatlines)
    last_seen: LastSeen | None = None  # the store's LastSeen of runs (absence, since: last_seen)


class ScheduledRule(Protocol):
    rule: Rule
    # Statuses of the events `observe` wants (None: every event); runs are not its business.
    observes: frozenset[str] | None
    # What it reads of the runs it gets from the tracker; None: it does not use the tracker.
    run_reads: Reads | None

    def observe(self, seen: Seen) -> None:
        """Count the event if it matters to the rule; may raise (the caller's guard counts)."""
        ...

    def evaluate(self, now: datetime) -> list[Alert]: ...


class Windowed(Protocol):
    """A kind with window state (threshold, flatline): what a warm-up loads instead of
    replaying the window (consumers.rules.windows)."""

    rule: Rule
    observes: frozenset[str] | None

    def observe(self, seen: Seen) -> None: ...

    @property
    def dirty(self) -> bool:
        """Changed since its state was last taken or loaded."""
        ...

    def take(self, examples: ExampleRefs) -> dict[str, Any]:
        """Its state as data, from then on not dirty."""
        ...

    def load(self, state: dict[str, Any], events: list[RunStatusEvent]) -> None:
        """The state `take` gave; raises (and stays as it was) on one it cannot take."""
        ...


class _Threshold:
    run_reads = None

    def __init__(self, rule: Rule, context: Context) -> None:
        self.rule = rule
        self.counter = ThresholdCounter(rule, context.guard)
        self.instances = context.instances
        self.numerator, self.denominator = self.counter.numerator, self.counter.denominator
        matchers = [self.counter.numerator]
        if self.counter.denominator is not None:
            matchers.append(self.counter.denominator)
        self.observes: frozenset[str] | None = frozenset()
        for matcher in matchers:
            if matcher.statuses is None or self.observes is None:
                self.observes = None
            else:
                self.observes |= matcher.statuses

    def observe(self, seen: Seen) -> None:
        counter, event = self.counter, seen.event
        num = self.numerator.accepts(event, seen.data)
        den = self.denominator is not None and self.denominator.accepts(event, seen.data)
        if not (num or den):
            return
        by = counter.spec.group_by
        grouped = seen.groups.get(by)
        if grouped is None:
            values = group_values(event, by)
            grouped = seen.groups[by] = (group_key(values), values)
        counter.observe(event, num, den, grouped)

    @property
    def dirty(self) -> bool:
        return self.counter.dirty

    def take(self, examples: ExampleRefs) -> dict[str, Any]:
        self.counter.dirty = False
        return self.counter.dump(examples)

    def load(self, state: dict[str, Any], events: list[RunStatusEvent]) -> None:
        self.counter.load(state, events)

    def evaluate(self, now: datetime) -> list[Alert]:
        rule, spec = self.rule, self.counter.spec
        firing = set(self.instances.firing(rule.name))
        return self.instances.step(
            rule,
            self.counter.evaluate(now, firing),
            now,
            periods=spec.periods,
            breaches=spec.breaches,
            resolve_after=spec.resolve_after,
        )


class _Flatline:
    run_reads = None

    def __init__(self, rule: Rule, context: Context) -> None:
        self.rule = rule
        self.flatline = Flatline(rule, context.guard)
        self.observes = self.flatline.matcher.statuses
        self.context = context

    def observe(self, seen: Seen) -> None:
        if self.flatline.matcher.accepts(seen.event, seen.data):
            self.flatline.observe(seen.event)

    @property
    def dirty(self) -> bool:
        return self.flatline.dirty

    def take(self, examples: ExampleRefs) -> dict[str, Any]:
        self.flatline.dirty = False
        return self.flatline.dump(examples)

    def load(self, state: dict[str, Any], events: list[RunStatusEvent]) -> None:
        self.flatline.load(state, events)

    def evaluate(self, now: datetime) -> list[Alert]:
        self.flatline.watching_since = self.context.watching_since
        return self.context.instances.step(self.rule, self.flatline.evaluate(now), now)


class _PerRun:
    """Absence and duration: findings per tracked run, one instance per run."""

    observes = NOTHING

    def __init__(
        self, rule: Rule, context: Context, judge: Callable[[RunTracker, datetime], list[Finding]]
    ) -> None:
        self.rule = rule
        self.context = context
        self.judge = judge

    def observe(self, seen: Seen) -> None:
        return None

    def evaluate(self, now: datetime) -> list[Alert]:
        context = self.context
        findings = self.judge(context.runs, now)
        # A run evicted from the tracker cannot be judged: its firing alert stays firing
        # (a breached finding with no event) instead of resolving for being forgotten.
        evicted = context.runs.evicted
        if evicted:
            findings += [
                Finding(run_id, True, None)
                for run_id in context.instances.firing(self.rule.name)
                if run_id in evicted
            ]
        return context.instances.step(self.rule, findings, now, describe=context.describe)


class _Stuck(_PerRun):
    def __init__(self, rule: Rule, context: Context) -> None:
        stuck = StuckRuns(rule, context.guard)

        def judge(runs: RunTracker, now: datetime) -> list[Finding]:
            return stuck.evaluate(runs, now, context.last_seen)

        super().__init__(rule, context, judge)
        self.run_reads = stuck.matcher.reads


class _Long(_PerRun):
    def __init__(self, rule: Rule, context: Context) -> None:
        self.long = LongRuns(rule, context.guard)
        super().__init__(rule, context, self.long.evaluate)
        self.run_reads = self.long.matcher.reads


class _Rollup:
    observes = NOTHING

    def __init__(self, rule: Rule, context: Context) -> None:
        self.rule = rule
        self.rollup = Rollup(rule, context.guard)
        self.run_reads = self.rollup.matcher.reads | TREE_READS
        self.context = context

    def observe(self, seen: Seen) -> None:
        return None

    def evaluate(self, now: datetime) -> list[Alert]:
        rule, context = self.rule, self.context
        horizon = context.horizon
        alerts = []
        for root_id, kept, trigger, summary, details in self.rollup.evaluate(context.runs, now):
            event = kept if context.describe is None else context.describe(kept)
            alerts.append(
                Alert(
                    rule=rule.name,
                    severity=rule.severity,
                    labels=rule.labels,
                    annotations=rule.annotations,
                    receivers=rule.notify,
                    throttle_key=f"RootRunId={root_id}",
                    throttle_s=0.0,
                    event=event,
                    kind="tree",
                    instance=f"root:{root_id}",
                    summary=summary,
                    group={"RootRunId": root_id},
                    value=float(len(details)),
                    details=details,
                    # Replay safety: what happened longer than the horizon ago raises nothing.
                    stale=horizon is not None and trigger < now - horizon,
                )
            )
        return alerts


BUILDERS: dict[str, Callable[[Rule, Context], Any]] = {
    "threshold": _Threshold,
    "flatline": _Flatline,
    "absence": _Stuck,
    "duration": _Long,
    "tree": _Rollup,
}


def build(rule: Rule, context: Context) -> ScheduledRule:
    built: ScheduledRule = BUILDERS[rule.kind](rule, context)
    return built


def baselines_wanted(
    kinds: Iterable[ScheduledRule], runs: RunTracker
) -> tuple[tuple[str, ...], set[str]]:
    """The duration rules among `kinds` and the experiments whose baselines they may ask
    for: loaded in one query before they are evaluated (RunTracker.load_baselines)."""
    names: list[str] = []
    experiments: set[str] = set()
    for kind in kinds:
        if isinstance(kind, _Long):
            wanted = kind.long.baselines_wanted(runs)
            if wanted:
                names.append(kind.rule.name)
                experiments |= wanted
    return tuple(names), experiments


def windowed(kind: ScheduledRule) -> Windowed | None:
    """The kind as one with window state, if it has one."""
    return kind if isinstance(kind, _Threshold | _Flatline) else None
