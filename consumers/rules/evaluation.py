"""Evaluating the scheduled rule kinds: one object fed events, asked for alerts at times.

`observe(event)` updates the incremental state (window counts, flatline clocks, run states,
trees); `evaluate(now)` runs the rules that are due and returns the alerts they raise. Time
is whatever the caller says it is: the live scheduler passes the wall clock, `runwatch rules
test` a simulated clock stepping through the stored history, tests an injected one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from consumers.alerts import Alert
from consumers.events import RunStatusEvent, Status
from consumers.rules.absence import Flatline, StuckRuns
from consumers.rules.durations import LongRuns
from consumers.rules.instances import Instances, Key
from consumers.rules.model import Rule
from consumers.rules.threshold import ThresholdCounter, group_key, group_values
from consumers.rules.tracker import BaselineLoader, RunTracker
from consumers.rules.trees import Rollup, evict_finished
from consumers.store.alert_states import InstanceState

_EVICT_EVERY = timedelta(minutes=1)


class Evaluation:
    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        states: Mapping[Key, InstanceState] | None = None,
        resolved_receivers: Iterable[str] = (),
        horizon_s: float | None = None,
        baseline: BaselineLoader | None = None,
    ) -> None:
        self.rules = tuple(r for r in rules if r.enabled and not r.per_event)
        self.horizon = None if horizon_s is None else timedelta(seconds=horizon_s)
        self.thresholds = [ThresholdCounter(r) for r in self.rules if r.threshold is not None]
        self.flatlines = [Flatline(r) for r in self.rules if r.flatline is not None]
        self.stuck = [StuckRuns(r) for r in self.rules if r.absence is not None]
        self.long = [LongRuns(r) for r in self.rules if r.duration is not None]
        self.rollups = [Rollup(r) for r in self.rules if r.tree is not None]
        size = max((r.duration.baseline_runs for r in self.rules if r.duration), default=20)
        self.runs = RunTracker(baseline, size)
        self.runs.track_trees = bool(self.rollups)
        self.needs_runs = bool(self.stuck or self.long or self.rollups)
        self.instances = Instances(states, resolved_receivers)
        self.instances.forget_rules_except(r.name for r in self.rules)
        self.next_due: dict[str, datetime] = {}
        self._last_evict: datetime | None = None
        self.tree_keep = timedelta(
            seconds=max((r.tree.every for r in self.rules if r.tree), default=0) * 3 + 600
        )
        # Which threshold counters an event of each status can count in.
        self._by_status: dict[str, list[tuple[ThresholdCounter, bool, bool]]] = {}
        for status in Status:
            wanted = []
            for counter in self.thresholds:
                num = counter.numerator.statuses is None or status in counter.numerator.statuses
                den = counter.denominator is not None and (
                    counter.denominator.statuses is None or status in counter.denominator.statuses
                )
                if num or den:
                    wanted.append((counter, num, den))
            self._by_status[status.value] = wanted

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def longest_window(self) -> float:
        """How much history a warm-up must replay to rebuild the window counts."""
        spans = [c.spec.window for c in self.thresholds]
        spans += [f.spec.window for f in self.flatlines]
        return max(spans, default=0.0)

    @property
    def tick(self) -> float:
        """The finest evaluation interval: how often something can be due."""
        return min((float(r.every or 60.0) for r in self.rules), default=60.0)

    def observe(self, event: RunStatusEvent, *, counts: bool = True, runs: bool = True) -> None:
        if runs and self.needs_runs:
            self.runs.observe(event)
        if not counts:
            return
        groups: dict[tuple[str, ...], tuple[str, dict[str, str]]] = {}  # many rules share one
        for counter, num, den in self._by_status[event.Status]:
            matched_num = num and counter.numerator.matches(event)
            matched_den = (
                den and counter.denominator is not None and counter.denominator.matches(event)
            )
            if matched_num or matched_den:
                by = counter.spec.group_by
                grouped = groups.get(by)
                if grouped is None:
                    values = group_values(event, by)
                    grouped = groups[by] = (group_key(values), values)
                counter.observe(event, matched_num, matched_den, grouped)
        for flatline in self.flatlines:
            if flatline.matcher.matches(event):
                flatline.observe(event)

    def start_watching(self, since: datetime) -> None:
        """Flatlines judge time from `since` on (the start of the history available)."""
        for flatline in self.flatlines:
            flatline.watching_since = since

    def observe_all(self, events: Sequence[RunStatusEvent]) -> None:
        for event in events:
            self.observe(event)

    def _due(self, rule: Rule, now: datetime) -> bool:
        due = self.next_due.get(rule.name)
        if due is not None and due > now:
            return False
        self.next_due[rule.name] = now + timedelta(seconds=float(rule.every or 60.0))
        return True

    def evaluate(self, now: datetime) -> list[Alert]:
        """The alerts of every rule due at `now`, firings and resolutions."""
        alerts: list[Alert] = []
        step = self.instances.step
        for counter in self.thresholds:
            rule, spec = counter.rule, counter.spec
            if self._due(rule, now):
                firing = set(self.instances.firing(rule.name))
                alerts += step(
                    rule,
                    counter.evaluate(now, firing),
                    now,
                    periods=spec.periods,
                    breaches=spec.breaches,
                    resolve_after=spec.resolve_after,
                )
        for flatline in self.flatlines:
            if self._due(flatline.rule, now):
                alerts += step(flatline.rule, flatline.evaluate(now), now)
        for stuck in self.stuck:
            if self._due(stuck.rule, now):
                alerts += step(stuck.rule, stuck.evaluate(self.runs, now), now)
        for long in self.long:
            if self._due(long.rule, now):
                alerts += step(long.rule, long.evaluate(self.runs, now), now)
        for rollup in self.rollups:
            if self._due(rollup.rule, now):
                alerts += self._rollups(rollup, now)
        if self.rollups and (self._last_evict is None or now - self._last_evict >= _EVICT_EVERY):
            self._last_evict = now
            evict_finished(self.runs, now, self.tree_keep)
        return alerts

    def _rollups(self, rollup: Rollup, now: datetime) -> list[Alert]:
        rule = rollup.rule
        alerts = []
        for root_id, event, trigger, summary, details in rollup.evaluate(self.runs, now):
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
                    stale=self.is_stale(trigger, now),
                )
            )
        return alerts

    def is_stale(self, when: datetime, now: datetime) -> bool:
        """Replay safety: what happened longer than the horizon ago raises nothing."""
        return self.horizon is not None and when < now - self.horizon


def mark_stale(alerts: Sequence[Alert], now: datetime, horizon_s: float | None) -> list[Alert]:
    """Per-event alerts about events older than the horizon (a backfill, an offset reset)
    are recorded as suppressed-stale instead of being sent."""
    if horizon_s is None:
        return list(alerts)
    cutoff = now - timedelta(seconds=horizon_s)
    return [
        a.model_copy(update={"stale": True}) if a.event.TimeGenerated < cutoff else a
        for a in alerts
    ]
