"""Evaluating the scheduled rule kinds: one object fed events, asked for alerts at times.

`observe(event)` updates the incremental state (window counts, flatline clocks, run states,
trees); `evaluate(now)` runs the rules that are due and returns the alerts they raise. Time
is whatever the caller says it is: the live scheduler passes the wall clock, `runwatch rules
test` a simulated clock stepping through the stored history, tests an injected one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from consumers.model.alerts import Alert
from consumers.model.durations import BaselineLoader, EndedLoader
from consumers.model.events import RunStatusEvent, Status
from consumers.model.instances import InstanceState
from consumers.rules.absence import LastSeen
from consumers.rules.guard import RuleGuard
from consumers.rules.instances import Describe, Instances, Key
from consumers.rules.kinds import (
    Context,
    ScheduledRule,
    Seen,
    Windowed,
    baselines_wanted,
    build,
    windowed,
)
from consumers.rules.model import Rule
from consumers.rules.reads import union
from consumers.rules.tracker import DEFAULT_MAX_RUNS, RunTracker
from consumers.rules.trees import evict_finished
from consumers.rules.windows import (
    FORMAT,
    ExampleRefs,
    Ref,
    WindowStateError,
    decode,
    encode,
    fingerprint,
    refs_of,
)

_EVICT_EVERY = timedelta(minutes=1)

log = logging.getLogger(__name__)

# The stored events of these natural keys (those it has): a window state's examples.
FetchExamples = Callable[[Collection[Ref]], Mapping[Ref, RunStatusEvent]]


class Evaluation:
    """Every scheduled rule, dispatched one way: each event to the rules that observe it,
    each due rule's evaluation, each through the rule guard. A rule that raises is counted
    and skipped for that event or tick; the others go on (consumers.rules.guard)."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        states: Mapping[Key, InstanceState] | None = None,
        resolved_receivers: Iterable[str] = (),
        horizon_s: float | None = None,
        baseline: BaselineLoader | None = None,
        guard: RuleGuard | None = None,
        describe: Describe | None = None,
        max_runs: int = DEFAULT_MAX_RUNS,
        on_evict: Callable[[str], None] | None = None,
        last_seen: LastSeen | None = None,
        ended: EndedLoader | None = None,
    ) -> None:
        self.rules = tuple(r for r in rules if r.enabled and not r.per_event)
        self.guard = guard if guard is not None else RuleGuard()
        self.horizon = None if horizon_s is None else timedelta(seconds=horizon_s)
        size = max((r.duration.baseline_runs for r in self.rules if r.duration), default=20)
        self.runs = RunTracker(baseline, size, max_runs=max_runs, on_evict=on_evict, ended=ended)
        self.instances = Instances(states, resolved_receivers)
        self.instances.forget_rules_except(r.name for r in self.rules)
        self.context = Context(self.instances, self.runs, self.guard, describe, self.horizon)
        self.context.last_seen = last_seen
        self.kinds: tuple[ScheduledRule, ...] = tuple(build(r, self.context) for r in self.rules)
        run_kinds = [k for k in self.kinds if k.run_reads is not None]
        self.needs_runs = bool(run_kinds)
        self._run_rules = tuple(k.rule.name for k in run_kinds)
        self.runs.keep = union(k.run_reads for k in run_kinds if k.run_reads is not None)
        self._tree_rules = tuple(r.name for r in self.rules if r.tree is not None)
        self.runs.track_trees = bool(self._tree_rules)
        self.next_due: dict[str, datetime] = {}
        self._last_evict: datetime | None = None
        self.tree_keep = timedelta(
            seconds=max((r.tree.every for r in self.rules if r.tree), default=0) * 3 + 600
        )
        self._observers: dict[str, tuple[ScheduledRule, ...]] = {
            status.value: tuple(
                k for k in self.kinds if k.observes is None or status.value in k.observes
            )
            for status in Status
        }

        # Kinds with window state, by rule name, with the fingerprint of their definition.
        self.windowed: dict[str, tuple[Windowed, str]] = {}
        for kind in self.kinds:
            held, fp = windowed(kind), fingerprint(kind.rule)
            if held is not None and fp is not None:
                self.windowed[kind.rule.name] = (held, fp)

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def longest_window(self) -> float:
        """How much history a warm-up must replay to rebuild the window counts."""
        spans = [r.threshold.window for r in self.rules if r.threshold is not None]
        spans += [r.flatline.window for r in self.rules if r.flatline is not None]
        return max(spans, default=0.0)

    @property
    def tick(self) -> float:
        """The finest evaluation interval: how often something can be due."""
        return min((float(r.every or 60.0) for r in self.rules), default=60.0)

    def observe(
        self,
        event: RunStatusEvent,
        *,
        counts: bool = True,
        runs: bool = True,
        skip: Collection[str] = (),
    ) -> None:
        """`skip`: rules that counted the event already (a window state loaded from a
        snapshot taken after it was stored)."""
        guard = self.guard
        if runs and self.needs_runs:
            guard.call(self._run_rules, self.runs.observe, event)
        if not counts:
            return
        seen = Seen(event)
        for kind in self._observers.get(event.Status, ()):
            if skip and kind.rule.name in skip:
                continue
            try:  # the isolation boundary (consumers.rules.guard), inline: the hot path
                kind.observe(seen)
            except Exception as exc:
                guard.failed(kind.rule.name, exc)

    def before_observing(self, events: Iterable[RunStatusEvent]) -> None:
        """Before a batch is observed: the baselines its completions add to, loaded in one
        query (a catch-up after a warm-up completes runs of many experiments), and which of
        the runs the tracker does not know ended before the feed began, one query too."""
        if not self.needs_runs:
            return
        batch = list(events)
        wanted = {
            e.ExperimentName
            for e in batch
            if e.Status == Status.Completed and e.ExperimentName is not None
        }
        if wanted:
            self.guard.call(self._run_rules, self.runs.load_baselines, wanted)
        unknown = {e.RunId for e in batch if not e.is_terminal}
        if unknown:
            self.guard.call(self._run_rules, self.runs.load_ended, unknown)

    def load_run(self, event: RunStatusEvent, started: datetime | None) -> None:
        """Warm-up: a run's current state from the store."""
        self.guard.call(self._run_rules, self.runs.load_run, event, started)

    def set_root(self, event: RunStatusEvent) -> None:
        self.guard.call(self._tree_rules, self.runs.set_root, event)

    def start_watching(self, since: datetime) -> None:
        """Flatlines judge time from `since` on (the start of the history available)."""
        self.context.watching_since = since

    def observe_all(self, events: Sequence[RunStatusEvent]) -> None:
        for event in events:
            self.observe(event)

    # -- window snapshots (consumers.rules.windows) -------------------------------------

    def restore(self, stored: Mapping[str, tuple[str, str]], fetch: FetchExamples) -> list[str]:
        """Load the stored window states (rule -> (fingerprint, state)) of the rules whose
        definition is the one in force, their example events read with `fetch` (one call
        for all); return the windowed rules left to replay: no row, another definition's,
        or one that cannot be read or whose examples are gone (logged)."""
        replay, usable = [], []
        for name, (kind, fp) in self.windowed.items():
            row = stored.get(name)
            if row is None or row[0] != fp:
                replay.append(name)
                continue
            try:
                state = decode(row[1])
                usable.append((name, kind, state, refs_of(state)))
            except WindowStateError as exc:
                log.warning("rule %s: stored window state ignored, replaying it: %s", name, exc)
                replay.append(name)
        found = fetch({ref for *_, refs in usable for ref in refs}) if usable else {}
        for name, kind, state, refs in usable:
            try:
                events = [found[ref] for ref in refs]
            except KeyError as exc:
                log.warning("rule %s: example event %s no longer stored, replaying it", name, exc)
                replay.append(name)
                continue
            try:
                kind.load(state, events)
            except (ValueError, TypeError, KeyError) as exc:  # WindowStateError included
                log.warning("rule %s: stored window state ignored, replaying it: %s", name, exc)
                replay.append(name)
        return replay

    def replay_span(
        self, names: Iterable[str], now: datetime
    ) -> tuple[datetime, frozenset[str] | None] | None:
        """What `replay` of these rules needs read: events since this time, of these
        statuses (None: of any); None when nothing."""
        kinds = [self.windowed[n][0] for n in names]
        if not kinds:
            return None
        since = min(now - self._window(k.rule) for k in kinds)
        statuses: frozenset[str] | None = frozenset()
        for kind in kinds:
            if kind.observes is None or statuses is None:
                statuses = None
            else:
                statuses |= kind.observes
        return since, statuses

    def replay(self, events: Iterable[RunStatusEvent], names: Iterable[str], now: datetime) -> int:
        """Count `events` (oldest first) into the named rules only, each from the start of
        its own window on; the run tracker is not fed (it is loaded from the runs table)."""
        pending = sorted(
            ((now - self._window(self.windowed[n][0].rule), self.windowed[n][0]) for n in names),
            key=lambda item: item[0],
            reverse=True,
        )
        observers: dict[str, list[Windowed]] = {status.value: [] for status in Status}
        guard, count = self.guard, 0
        for event in events:
            at = event.TimeGenerated
            while pending and pending[-1][0] <= at:
                _, kind = pending.pop()
                for status, watching in observers.items():
                    if kind.observes is None or status in kind.observes:
                        watching.append(kind)
            active = observers.get(event.Status)
            if not active:
                continue
            count += 1
            seen = Seen(event)
            for kind in active:
                try:  # the isolation boundary, as in `observe`
                    kind.observe(seen)
                except Exception as exc:
                    guard.failed(kind.rule.name, exc)
        return count

    @staticmethod
    def _window(rule: Rule) -> timedelta:
        spec = rule.threshold or rule.flatline
        return timedelta(seconds=spec.window if spec is not None else 0.0)

    def dirty_windows(self) -> list[str]:
        """The rules whose window state changed since it was last taken or loaded."""
        return [name for name, (kind, _) in self.windowed.items() if kind.dirty]

    def take_window(self, name: str) -> tuple[str, str]:
        """A rule's window state as (fingerprint, text) for the store; from then on it is
        not dirty."""
        kind, fp = self.windowed[name]
        refs = ExampleRefs()
        body = kind.take(refs)
        return fp, encode({"format": FORMAT, "examples": refs.refs, **body})

    def _due(self, rule: Rule, now: datetime) -> bool:
        due = self.next_due.get(rule.name)
        if due is not None and due > now:
            return False
        self.next_due[rule.name] = now + timedelta(seconds=float(rule.every or 60.0))
        return True

    def evaluate(self, now: datetime) -> list[Alert]:
        """The alerts of every rule due at `now`, firings and resolutions."""
        alerts: list[Alert] = []
        due = [kind for kind in self.kinds if self._due(kind.rule, now)]
        names, experiments = baselines_wanted(due, self.runs)
        if experiments:  # failing, each rule asks again for its own (and fails as its own)
            self.guard.call(names, self.runs.load_baselines, experiments)
        for kind in due:
            alerts += self.guard.call(kind.rule.name, kind.evaluate, now) or []
        if self._tree_rules and (
            self._last_evict is None or now - self._last_evict >= _EVICT_EVERY
        ):
            self._last_evict = now
            self.guard.call(self._tree_rules, evict_finished, self.runs, now, self.tree_keep)
        return alerts


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
