"""Scheduled evaluation in the service: every tick, the replica holding the evaluation lease
reads the events stored since its last tick, evaluates the rules that are due, and writes
their notifications and the alert states in one transaction.

Only the lease holder evaluates, so several replicas raise each alert once. A replica that
gets (or gets back) the lease, or reloads the rules, warms up first: the alert states from
the store, the run states from the runs table, and the window counts of the threshold and
flatline rules from the snapshot the holder writes in each tick's transaction (tables
rule_windows and rule_feed): the feed goes on from the snapshot's cursor, so the first tick
reads only what arrived since. Only rules without a usable snapshot row (new, changed, or a
damaged row) replay their own window, reading only the statuses they count. After it each
tick costs only what arrived since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from consumers.model.alerts import Alert
from consumers.model.errors import RunwatchError
from consumers.noise.policy import NoisePolicy
from consumers.outbox.recorder import Recorder
from consumers.rules.engine import RuleSet
from consumers.rules.evaluation import Evaluation
from consumers.rules.tracker import DEFAULT_MAX_RUNS
from consumers.service.windows import DEFAULT_BUDGET, WarmUp, WindowSnapshots
from consumers.store.alert_states import load_states, save_states
from consumers.store.engine import Store
from consumers.store.feed import (
    EventFeed,
    baseline_loader,
    current_runs,
    earliest_event,
    ended_loader,
    last_seen,
    run_details,
)
from consumers.store.outbox_state import SqlOutboxState

log = logging.getLogger(__name__)


class LeaseLike(Protocol):
    """What the scheduler needs of consumers.store.lease.Lease."""

    def try_acquire(self) -> bool:
        """Acquire, or renew if held; False while another holder has it."""
        ...

    def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Cycle:
    """What one tick did."""

    leader: bool
    events: int = 0
    alerts: int = 0
    notifications: int = 0
    seconds: float = 0.0
    warmed_up: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        lease: LeaseLike,
        *,
        receiver_kinds: Mapping[str, str],
        resolved_receivers: frozenset[str] = frozenset(),
        horizon_s: float | None = None,
        clock: Callable[[], datetime] = _now,
        on_notified: Callable[[], None] | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        max_tracked_runs: int = DEFAULT_MAX_RUNS,
        on_evict: Callable[[str], None] | None = None,
        noise: NoisePolicy | None = None,
        snapshot_budget: int = DEFAULT_BUDGET,
    ) -> None:
        self._store = store
        self._rules = rules
        self._lease = lease
        self._kinds = dict(receiver_kinds)
        self._resolved = resolved_receivers
        self._horizon = horizon_s
        self._clock = clock
        self._on_notified = on_notified
        self._on_alert = on_alert
        self._max_runs = max_tracked_runs
        self._on_evict = on_evict
        # the same recorder and noise policy as the ingest path (consumers/outbox)
        self._recorder = Recorder(self._kinds, noise, resolved_receivers=resolved_receivers)
        self._ruleset: RuleSet | None = None
        self._evaluation: Evaluation | None = None
        self._feed = EventFeed(store)  # what this replica has seen (see EventFeed)
        self.snapshots = WindowSnapshots(store, self._feed, budget=snapshot_budget)
        self.last_warm_up: WarmUp | None = None

    @property
    def evaluation(self) -> Evaluation | None:
        return self._evaluation

    def tracked_runs(self) -> int:
        """Runs the run tracker holds now (active runs and tree children)."""
        evaluation = self._evaluation
        if evaluation is None:
            return 0
        return len(evaluation.runs.active) + evaluation.runs.tree_runs

    def run_once(self) -> Cycle:
        started = time.perf_counter()
        if not self._lease.try_acquire():
            self._evaluation = None  # whoever holds it moves the states on: re-read them
            return Cycle(leader=False)
        ruleset = self._rules()
        now = self._clock()
        warmed = False
        if self._evaluation is None or ruleset is not self._ruleset:
            self._warm_up(ruleset, now)
            warmed = True
        evaluation = self._evaluation
        assert evaluation is not None
        if not evaluation:
            return Cycle(leader=True, warmed_up=warmed)
        fresh = self._feed.read_with_ids()
        self.snapshots.observe(evaluation, fresh)
        alerts = evaluation.evaluate(now)
        changes = evaluation.instances.take_changes()
        snapshot = self.snapshots.take(evaluation)
        written = 0
        if alerts or changes or snapshot is not None:
            with self._store.write_lock, self._store.engine.begin() as conn:
                written = self._recorder.record(SqlOutboxState(conn), alerts, now)
                save_states(conn, changes, now)
                if snapshot is not None:
                    self.snapshots.write(conn, snapshot, now)
            if snapshot is not None:
                self.snapshots.written(snapshot)
        if written and self._on_notified is not None:
            self._on_notified()
        if self._on_alert is not None:
            for alert in alerts:
                self._on_alert(alert)
        return Cycle(
            leader=True,
            events=len(fresh),
            alerts=len(alerts),
            notifications=written,
            seconds=time.perf_counter() - started,
            warmed_up=warmed,
        )

    def _warm_up(self, ruleset: RuleSet, now: datetime) -> None:
        self._ruleset = ruleset
        boundary = self._feed.last_id()
        evaluation = Evaluation(
            ruleset.scheduled,
            states=load_states(self._store),
            resolved_receivers=self._resolved,
            horizon_s=self._horizon,
            # completions stored up to the last id now are in the runs table the tracker is
            # loaded from; those the feed delivers too are counted once (tracker.Baseline)
            baseline=baseline_loader(self._store, stored_up_to=boundary),
            # runs that ended before it, which the feed will not end again
            ended=ended_loader(self._store, stored_up_to=boundary),
            guard=ruleset.guard,
            describe=run_details(self._store),
            max_runs=self._max_runs,
            on_evict=self._on_evict,
            last_seen=last_seen(self._store),
        )
        warm = self.last_warm_up = self.snapshots.warm_up(evaluation, now)
        if evaluation.needs_runs:
            tree_since = now - evaluation.tree_keep if evaluation.runs.track_trees else None
            roots = []
            kept = evaluation.runs.keep.kept()
            for event, started in current_runs(self._store, tree_since, kept):
                evaluation.load_run(event, started)
                if event.ParentRunId is None and evaluation.runs.track_trees:
                    roots.append(evaluation.runs.keep.cut(event))
            for event in roots:
                evaluation.set_root(event)
        earliest = earliest_event(self._store)
        evaluation.start_watching(earliest or now)
        self._evaluation = evaluation
        log.info(
            "scheduled evaluation: %d rules warmed up (%d window states loaded, %d rules "
            "replayed from %d events; %d events to catch up; %d active runs)",
            len(evaluation.rules),
            warm.loaded,
            len(warm.replayed),
            warm.replayed_events,
            warm.behind,
            len(evaluation.runs.active),
        )

    def start(self, stop: threading.Event, tick_s: float) -> threading.Thread:
        thread = threading.Thread(
            target=self._loop, args=(stop, tick_s), name="rule-scheduler", daemon=True
        )
        thread.start()
        return thread

    def _loop(self, stop: threading.Event, tick_s: float) -> None:
        while not stop.is_set():
            try:
                cycle = self.run_once()
                if cycle.alerts:
                    log.info("scheduled evaluation raised %d alerts", cycle.alerts)
            except RunwatchError as exc:
                self._evaluation = None  # start again from the store's state
                log.warning("scheduled evaluation failed, will retry: %s", exc)
            except Exception:  # the loop must outlive a surprise; state is re-read
                self._evaluation = None
                log.exception("scheduled evaluation failed")
            if stop.wait(tick_s):
                break
        try:
            self._lease.release()
        except Exception:  # releasing is a courtesy: the lease expires anyway
            log.warning("releasing the evaluation lease failed", exc_info=True)
