"""The run states the scheduled kinds need, kept in memory and fed event by event.

Absence and duration rules look at runs that have not ended; duration rules also at the
durations of recent completed runs of an experiment; tree roll-ups at the children of roots
that have failing children. Keeping exactly that (and not every run ever seen) bounds the
memory by the active runs, and lets the live scheduler and `runwatch rules test` share one
code path: the live one is warmed up from the store's `runs` table, the dry run from the
replayed history.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from consumers.events import STATUS_RANK, RunStatusEvent, Status

# Runs that ended, remembered so that a late non-terminal event does not revive them.
_ENDED_MEMORY = 200_000

BaselineLoader = Callable[[str, int], list[float]]


@dataclass(slots=True)
class ActiveRun:
    event: RunStatusEvent  # the latest event: status, tags, experiment, ...
    since: datetime  # when the current status began
    started: datetime | None  # first Running


@dataclass(slots=True)
class Tree:
    """A root with at least one child seen: its children's latest events."""

    children: dict[str, RunStatusEvent] = field(default_factory=dict)
    root: RunStatusEvent | None = None
    ended: datetime | None = None  # the root's end
    first_match: dict[str, datetime] = field(default_factory=dict)  # rule -> first matching child
    done: set[str] = field(default_factory=set)  # rules that rolled this tree up


def _newer(a: RunStatusEvent, b: RunStatusEvent) -> bool:
    """Is `a` later in the run's life than `b` (time, then lifecycle order)?"""
    if a.TimeGenerated != b.TimeGenerated:
        return a.TimeGenerated > b.TimeGenerated
    return STATUS_RANK[a.Status] > STATUS_RANK[b.Status]


class RunTracker:
    def __init__(self, baseline: BaselineLoader | None = None, baseline_size: int = 20) -> None:
        self.active: dict[str, ActiveRun] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()
        self.trees: dict[str, Tree] = {}
        self.track_trees = False
        self._baseline_loader = baseline
        self.baseline_size = baseline_size
        self._baselines: dict[str, deque[float]] = {}

    def observe(self, event: RunStatusEvent) -> None:
        run_id = event.RunId
        if self.track_trees:
            self._tree(event)
        if run_id in self.ended:
            return
        current = self.active.get(run_id)
        started = current.started if current is not None else None
        if event.Status == Status.Running and (started is None or event.TimeGenerated < started):
            started = event.TimeGenerated
        if current is not None and not _newer(event, current.event):
            current.started = started
            return
        if event.is_terminal:
            self.active.pop(run_id, None)
            self.ended[run_id] = None
            if len(self.ended) > _ENDED_MEMORY:
                self.ended.popitem(last=False)
            if event.Status == Status.Completed and started is not None:
                self._completed(event, (event.TimeGenerated - started).total_seconds())
            return
        since = event.TimeGenerated
        if current is not None and current.event.Status == event.Status:
            since = current.since
        self.active[run_id] = ActiveRun(event, since, started)

    def _tree(self, event: RunStatusEvent) -> None:
        if event.ParentRunId is None:
            tree = self.trees.get(event.RunId)
            if tree is None:
                return  # a root matters once it has children
            if tree.root is None or _newer(event, tree.root):
                tree.root = event
            if event.is_terminal and tree.ended is None:
                tree.ended = event.TimeGenerated
            return
        root = event.root_run_id
        tree = self.trees.get(root)
        if tree is None:
            tree = self.trees[root] = Tree()
        previous = tree.children.get(event.RunId)
        if previous is None or _newer(event, previous):
            tree.children[event.RunId] = event

    def load_run(self, event: RunStatusEvent, started: datetime | None) -> None:
        """Warm-up from the store's runs table: the run's current state as one event."""
        if self.track_trees and event.ParentRunId is not None:
            self._tree(event)
        if event.is_terminal:
            self.ended[event.RunId] = None
            return
        self.active[event.RunId] = ActiveRun(event, event.TimeGenerated, started)

    def set_root(self, event: RunStatusEvent) -> None:
        """Warm-up: a root's current state, for a tree whose children were loaded."""
        tree = self.trees.get(event.RunId)
        if tree is not None:
            tree.root = event
            if event.is_terminal:
                tree.ended = event.TimeGenerated

    # -- durations ------------------------------------------------------------------------

    def _completed(self, event: RunStatusEvent, seconds: float) -> None:
        experiment = event.ExperimentName
        if experiment is None or seconds < 0:
            return
        durations = self._baselines.get(experiment)
        if durations is None:
            if self._baseline_loader is None:
                durations = self._baselines[experiment] = deque(maxlen=self.baseline_size)
            else:
                durations = self._load(experiment)
        durations.append(seconds)

    def _load(self, experiment: str) -> deque[float]:
        loader = self._baseline_loader
        loaded = loader(experiment, self.baseline_size) if loader is not None else []
        durations = deque(loaded, maxlen=self.baseline_size)
        self._baselines[experiment] = durations
        return durations

    def baseline(self, experiment: str, n: int) -> list[float] | None:
        """The last `n` completed durations of `experiment` (oldest first), or None while
        fewer than `n` exist."""
        durations = self._baselines.get(experiment)
        if durations is None:
            durations = self._load(experiment)
        if len(durations) < n:
            return None
        return list(durations)[-n:]
