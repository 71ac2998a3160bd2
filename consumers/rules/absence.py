"""Absence rules: runs stuck in a non-terminal status, and flatlines (nothing at all).

Stuck: a run whose latest status is one of `limits` and has not changed for longer than that
status's limit. One alert instance per run; it resolves when the run moves on (a new status,
or its end). With `since: last_seen` the clock is the run's last sign of life instead: its
latest status event or run-update record (the heartbeats of `runwatch run exec`), i.e. the
store's LastSeen. Run updates are not events, so the tracker never sees them: before a run
is judged silent, its LastSeen is read from the store (`LastSeen`, given by the scheduler),
only for the runs whose last known sign of life is older than the limit; a heartbeating run
is thus looked up about once per limit, and it resolves when heartbeats come back. Without
that reader (`runwatch rules test`) the events alone are judged.

Flatline: no event matching `when` within `window`, per group; it resolves when a matching
event arrives. A flatline judges only time that the store has seen: right after the first
start (no history yet) it waits one window before it can fire.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from consumers.model.events import RunStatusEvent
from consumers.rules.durations import span
from consumers.rules.engine import Matcher, single_name
from consumers.rules.guard import RuleGuard
from consumers.rules.instances import Finding
from consumers.rules.model import Rule
from consumers.rules.threshold import group_key, group_values
from consumers.rules.tracker import ActiveRun, RunTracker
from consumers.rules.windows import ExampleRefs, WindowStateError, example

# Run ids -> their LastSeen in the store (the ones it has).
LastSeen = Callable[[Collection[str]], Mapping[str, datetime]]


class StuckRuns:
    def __init__(self, rule: Rule, guard: RuleGuard) -> None:
        assert rule.absence is not None
        self.rule = rule
        self.limits = rule.absence.limits
        self.by_last_seen = rule.absence.since == "last_seen"
        # `when.status` would contradict the limits; the other conditions filter runs.
        when = rule.when.model_copy(update={"status": None})
        self.matcher = Matcher.compile(rule, when, guard=guard)
        self.experiment = single_name(when.experiment)  # judge only its runs
        self._seen: dict[str, datetime] = {}  # LastSeen read from the store, per run

    def _since(self, run: ActiveRun) -> datetime:
        if not self.by_last_seen:
            return run.since
        seen = self._seen.get(run.event.RunId)
        latest = run.event.TimeGenerated
        return latest if seen is None or seen < latest else seen

    def evaluate(
        self, runs: RunTracker, now: datetime, last_seen: LastSeen | None = None
    ) -> list[Finding]:
        over: list[tuple[ActiveRun, float]] = []
        active = (
            runs.active.values() if self.experiment is None else runs.active_of(self.experiment)
        )
        for run in active:
            limit = self.limits.get(run.event.Status)
            if limit is None or (now - self._since(run)).total_seconds() <= limit:
                continue
            if self.matcher.matches(run.event):
                over.append((run, limit))
        if self.by_last_seen:
            self._seen = {k: v for k, v in self._seen.items() if k in runs.active}
            if over and last_seen is not None:
                self._seen.update(last_seen([run.event.RunId for run, _ in over]))
                over = [
                    (run, limit)
                    for run, limit in over
                    if (now - self._since(run)).total_seconds() > limit
                ]
        return [self._finding(run, limit, now) for run, limit in over]

    def _finding(self, run: ActiveRun, limit: float, now: datetime) -> Finding:
        event, status = run.event, run.event.Status
        quiet = (now - self._since(run)).total_seconds()
        if self.by_last_seen:
            summary = (
                f"run {event.RunId} ({status}) has sent nothing for {span(quiet)} "
                f"(limit {span(limit)}): no heartbeat, no status change"
            )
        else:
            summary = f"run {event.RunId} has been {status} for {span(quiet)} (limit {span(limit)})"
        return Finding(
            event.RunId,
            True,
            event,
            summary=summary,
            group={"RunId": event.RunId, "Status": status},
            value=quiet,
        )


class Flatline:
    def __init__(self, rule: Rule, guard: RuleGuard) -> None:
        assert rule.flatline is not None
        self.rule = rule
        self.spec = rule.flatline
        self.matcher = Matcher.compile(rule, guard=guard)
        self.last: dict[str, RunStatusEvent] = {}  # group -> latest matching event
        self.values: dict[str, dict[str, str]] = {}
        self.watching_since: datetime | None = None  # the start of the history judged
        self.dirty = True  # changed since the state was last taken (`dump`) or loaded

    def observe(self, event: RunStatusEvent) -> None:
        values = group_values(event, self.spec.group_by)
        key = group_key(values)
        last = self.last.get(key)
        if last is None or event.TimeGenerated > last.TimeGenerated:
            self.last[key] = event
            self.values[key] = values
            self.dirty = True

    def dump(self, examples: ExampleRefs) -> dict[str, Any]:
        """Per group its values and latest matching event (consumers.rules.windows)."""
        return {"groups": [[k, self.values[k], examples.ref(e)] for k, e in self.last.items()]}

    def load(self, state: dict[str, Any], events: list[RunStatusEvent]) -> None:
        """What `dump` gave; raises on a state it cannot take, leaving itself as it was."""
        last: dict[str, RunStatusEvent] = {}
        values: dict[str, dict[str, str]] = {}
        for key, group, number in state["groups"]:
            event = example(events, number)
            if not isinstance(group, dict) or event is None:
                raise WindowStateError(f"group {key!r} is damaged")
            last[str(key)] = event
            values[str(key)] = {str(k): str(v) for k, v in group.items()}
        self.last, self.values = last, values
        self.dirty = False

    def evaluate(self, now: datetime) -> list[Finding]:
        window = self.spec.window
        if self.watching_since is None or (now - self.watching_since).total_seconds() < window:
            return []
        findings: list[Finding] = []
        keys = list(self.last) or ([""] if not self.spec.group_by else [])
        for key in keys:
            last = self.last.get(key)
            quiet = now.timestamp() - (
                last.TimeGenerated.timestamp() if last else self.watching_since.timestamp()
            )
            if quiet <= window:
                continue
            where = ", ".join(f"{k}={v}" for k, v in self.values.get(key, {}).items())
            seen = "none in the window"
            if last is not None:
                seen = f"last one at {last.TimeGenerated:%Y-%m-%d %H:%M} UTC"
            findings.append(
                Finding(
                    key,
                    True,
                    last or self._placeholder(now),
                    summary=(
                        f"{self.rule.name}: no matching event in {span(window)}"
                        f"{' for ' + where if where else ''} ({seen})"
                    ),
                    group=self.values.get(key, {}),
                    value=quiet,
                )
            )
        return findings

    def _placeholder(self, now: datetime) -> RunStatusEvent:
        """No matching event was ever seen, yet the alert needs one to describe: an event
        naming the rule, with the filter's first status and experiment when they are plain."""
        when = self.rule.when
        experiment = when.experiment[0] if when.experiment else None
        if experiment is not None and any(c in experiment for c in "*?["):
            experiment = None
        return RunStatusEvent(
            TimeGenerated=now,
            RunId=f"flatline:{self.rule.name}",
            Status=when.status[0] if when.status else "NotStarted",
            ExperimentName=experiment,
            Message=f"no event matching rule {self.rule.name} has been seen",
        )
