"""Duration rules: a run in Running for longer than an absolute limit, or than `factor` times
the p90 of the last `baseline_runs` completed runs of its experiment. The relative limit is
applied only once that many completed runs exist: a new experiment has no normal yet.
"""

from __future__ import annotations

import math
from datetime import datetime

from consumers.model.events import Status
from consumers.rules.engine import Matcher, single_name
from consumers.rules.guard import RuleGuard
from consumers.rules.instances import Finding
from consumers.rules.model import Rule
from consumers.rules.tracker import RunTracker


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]


def span(seconds: float) -> str:
    """'2h 01m', '4m 05s', '45s': the run times and limits of duration and absence texts."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class LongRuns:
    def __init__(self, rule: Rule, guard: RuleGuard) -> None:
        assert rule.duration is not None
        self.rule = rule
        self.spec = rule.duration
        when = rule.when.model_copy(update={"status": None})
        self.matcher = Matcher.compile(rule, when, guard=guard)
        self.experiment = single_name(when.experiment)  # judge only its runs

    def baselines_wanted(self, runs: RunTracker) -> set[str]:
        """The experiments whose baselines `evaluate` may ask for (more, not fewer: before
        the conditions), so that one query loads those of every rule due."""
        if self.spec.factor is None:
            return set()
        active = (
            runs.active.values() if self.experiment is None else runs.active_of(self.experiment)
        )
        return {
            name
            for run in active
            if run.started is not None
            and run.event.Status == Status.Running
            and (name := run.event.ExperimentName) is not None
        }

    def evaluate(self, runs: RunTracker, now: datetime) -> list[Finding]:
        spec = self.spec
        findings: list[Finding] = []
        active = (
            runs.active.values() if self.experiment is None else runs.active_of(self.experiment)
        )
        for run in active:
            event = run.event
            if event.Status != Status.Running or run.started is None:
                continue
            elapsed = (now - run.started).total_seconds()
            if spec.max is not None and elapsed <= spec.max and spec.factor is None:
                continue
            if not self.matcher.matches(event):
                continue
            reasons: list[str] = []
            if spec.max is not None and elapsed > spec.max:
                reasons.append(f"limit {span(spec.max)}")
            if spec.factor is not None and event.ExperimentName is not None:
                baseline = runs.baseline(event.ExperimentName, spec.baseline_runs)
                if baseline is not None:
                    typical = p90(baseline)
                    if elapsed > spec.factor * typical:
                        reasons.append(
                            f"{spec.factor:g} x p90 {span(typical)} of the last "
                            f"{len(baseline)} completed runs"
                        )
            if not reasons:
                continue
            findings.append(
                Finding(
                    event.RunId,
                    True,
                    event,
                    summary=(
                        f"run {event.RunId} has been Running for {span(elapsed)} "
                        f"({'; '.join(reasons)})"
                    ),
                    group={"RunId": event.RunId},
                    value=elapsed,
                )
            )
        return findings
