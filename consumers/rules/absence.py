"""Absence rules: runs stuck in a non-terminal status, and flatlines (nothing at all).

Stuck: a run whose latest status is one of `limits` and has not changed for longer than that
status's limit. One alert instance per run; it resolves when the run moves on (a new status,
or its end). Flatline: no event matching `when` within `window`, per group; it resolves
when a matching event arrives. A flatline judges only time that the store has seen: right
after the first start (no history yet) it waits one window before it can fire.
"""

from __future__ import annotations

from datetime import datetime

from consumers.events import RunStatusEvent
from consumers.rules.durations import span
from consumers.rules.engine import Matcher
from consumers.rules.guard import RuleGuard
from consumers.rules.instances import Finding
from consumers.rules.model import Rule
from consumers.rules.threshold import group_key, group_values
from consumers.rules.tracker import RunTracker


class StuckRuns:
    def __init__(self, rule: Rule, guard: RuleGuard) -> None:
        assert rule.absence is not None
        self.rule = rule
        self.limits = rule.absence.limits
        # `when.status` would contradict the limits; the other conditions filter runs.
        when = rule.when.model_copy(update={"status": None})
        self.matcher = Matcher.compile(rule, when, guard=guard)

    def evaluate(self, runs: RunTracker, now: datetime) -> list[Finding]:
        findings: list[Finding] = []
        for run in runs.active.values():
            status = run.event.Status
            limit = self.limits.get(status)
            if limit is None:
                continue
            stuck_for = (now - run.since).total_seconds()
            if stuck_for <= limit or not self.matcher.matches(run.event):
                continue
            event = run.event
            findings.append(
                Finding(
                    event.RunId,
                    True,
                    event,
                    summary=(
                        f"run {event.RunId} has been {status} for {span(stuck_for)} "
                        f"(limit {span(limit)})"
                    ),
                    group={"RunId": event.RunId, "Status": status},
                    value=stuck_for,
                )
            )
        return findings


class Flatline:
    def __init__(self, rule: Rule, guard: RuleGuard) -> None:
        assert rule.flatline is not None
        self.rule = rule
        self.spec = rule.flatline
        self.matcher = Matcher.compile(rule, guard=guard)
        self.last: dict[str, RunStatusEvent] = {}  # group -> latest matching event
        self.values: dict[str, dict[str, str]] = {}
        self.watching_since: datetime | None = None  # the start of the history judged

    def observe(self, event: RunStatusEvent) -> None:
        values = group_values(event, self.spec.group_by)
        key = group_key(values)
        last = self.last.get(key)
        if last is None or event.TimeGenerated > last.TimeGenerated:
            self.last[key] = event
            self.values[key] = values

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
