"""The run states the scheduled kinds need, kept in memory and fed event by event.

Absence and duration rules look at runs that have not ended; duration rules also at the
durations of recent completed runs of an experiment; tree roll-ups at the children of roots
that have failing children. Keeping exactly that (and not every run ever seen) bounds the
memory by the active runs, and lets the live scheduler and `runwatch rules test` share one
code path: the live one is warmed up from the store's `runs` table, the dry run from the
replayed history.

Two more bounds, because runs that never end (a producer that died) and tags of megabytes
are both real: each run is kept as its latest event cut to what the rules read (`keep`,
see consumers.rules.reads), and at most `max_runs` active runs and `max_runs` tree children
are kept. Past that the least recently changed run (or tree) is evicted and counted: it is
not judged until its next event brings it back, and a firing alert about it stays firing
(it is not resolved for being forgotten) until then.
"""

from __future__ import annotations

from bisect import insort
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consumers.model.durations import BaselineLoader, BaselineRun, EndedLoader, EndedRun
from consumers.model.events import STATUS_RANK, RunStatusEvent, Status
from consumers.rules.reads import Reads

# Runs that ended (or were evicted), remembered so that a late non-terminal event does not
# revive them (or, for evicted ones, so that their firing alerts are not resolved).
_ENDED_MEMORY = 200_000
DEFAULT_MAX_RUNS = 20_000  # about 40 MB: ~1.9 KB per run kept (cut down)


@dataclass(slots=True)
class ActiveRun:
    event: RunStatusEvent  # the latest event, cut to what the rules read
    since: datetime  # when the current status began
    started: datetime | None  # first Running


class Baseline:
    """The durations of an experiment's last `size` completed runs by completion time (then
    run id), keyed by run.

    A completed run can reach the tracker twice: from the store's history (loaded when the
    experiment is first asked about) and from the feed (its completion event). Keyed by run,
    it counts once whichever way it came; ordered by when it completed, not by when it
    arrived, a late completion takes the place it has in the store, so that a replica that
    loaded its baselines keeps the same runs as one that saw every completion arrive.
    """

    __slots__ = ("_order", "_runs", "size")

    def __init__(self, size: int, runs: Iterable[BaselineRun] = ()) -> None:
        self.size = size
        self._runs: dict[str, float] = {}
        self._order: list[tuple[datetime, str]] = []  # (completed, run id), oldest first
        for run_id, completed, seconds in runs:
            self.add(run_id, completed, seconds)

    def add(self, run_id: str, completed: datetime, seconds: float) -> None:
        if run_id in self._runs:
            return
        self._insert(run_id, completed, seconds)

    def put(self, run_id: str, completed: datetime, seconds: float) -> None:
        """Add the run, or correct its duration (an earlier Running arrived late)."""
        if run_id in self._runs:
            self._runs[run_id] = seconds
        else:
            self._insert(run_id, completed, seconds)

    def _insert(self, run_id: str, completed: datetime, seconds: float) -> None:
        self._runs[run_id] = seconds
        insort(self._order, (completed, run_id))
        while len(self._order) > self.size:
            _, oldest = self._order.pop(0)
            del self._runs[oldest]

    def __len__(self) -> int:
        return len(self._runs)

    def last(self, n: int) -> list[float] | None:
        """The last `n` durations (oldest first), or None while fewer than `n` exist."""
        if len(self._runs) < n:
            return None
        return [self._runs[run_id] for _, run_id in self._order[-n:]]


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


def _ended(event: RunStatusEvent, started: datetime | None) -> EndedRun | None:
    """What a run's end leaves to remember: a completion keeps what a late Running needs to
    set its duration (experiment, completion, first Running); any other end, nothing."""
    if event.Status != Status.Completed:
        return None
    return (event.ExperimentName, event.TimeGenerated, started)


def _remember(memory: OrderedDict[str, Any], run_id: str, value: Any = None) -> None:
    memory[run_id] = value
    if len(memory) > _ENDED_MEMORY:
        memory.popitem(last=False)


class RunTracker:
    def __init__(
        self,
        baseline: BaselineLoader | None = None,
        baseline_size: int = 20,
        *,
        keep: Reads | None = None,
        max_runs: int = DEFAULT_MAX_RUNS,
        on_evict: Callable[[str], None] | None = None,
        ended: EndedLoader | None = None,
    ) -> None:
        # Least recently changed first: what the cap evicts.
        self.active: OrderedDict[str, ActiveRun] = OrderedDict()
        self._changed = 0  # bumped on every change of `active`: the index below is redone
        self._by_experiment: tuple[int, dict[str | None, list[ActiveRun]]] = (-1, {})
        # Completed runs keep (experiment, completion, first Running): a Running stored after
        # the completion still sets the run's duration, as the store's StartTime has it.
        self.ended: OrderedDict[str, EndedRun] = OrderedDict()
        self._ended_loader = ended
        self.evicted: OrderedDict[str, None] = OrderedDict()  # not judged until seen again
        self.trees: OrderedDict[str, Tree] = OrderedDict()
        self.tree_runs = 0  # children across all trees
        self.track_trees = False
        self.keep = keep if keep is not None else Reads(everything=True)
        self.max_runs = max_runs
        self.evictions: Counter[str] = Counter()  # "run" / "tree" -> how many
        self._on_evict = on_evict
        self._baseline_loader = baseline
        self.baseline_size = baseline_size
        self._baselines: dict[str, Baseline] = {}

    def observe(self, event: RunStatusEvent) -> None:
        run_id = event.RunId
        if self.track_trees:
            self._tree(event)
        if run_id in self.ended:
            if event.Status == Status.Running:
                self._late_start(run_id, event.TimeGenerated)
            return
        current = self.active.get(run_id)
        if current is None:
            self.evicted.pop(run_id, None)  # seen again: judged from this event on
        started = current.started if current is not None else None
        if event.Status == Status.Running and (started is None or event.TimeGenerated < started):
            started = event.TimeGenerated
        if current is not None and not _newer(event, current.event):
            current.started = started
            return
        if event.is_terminal:
            if self.active.pop(run_id, None) is not None:
                self._changed += 1
            _remember(self.ended, run_id, _ended(event, started))
            if event.Status == Status.Completed and started is not None:
                self._completed(event, (event.TimeGenerated - started).total_seconds())
            return
        since = event.TimeGenerated
        if current is not None and current.event.Status == event.Status:
            since = current.since
        self._track(ActiveRun(self.keep.cut(event), since, started))

    def _track(self, run: ActiveRun) -> None:
        run_id = run.event.RunId
        self.active[run_id] = run
        self.active.move_to_end(run_id)
        self._changed += 1
        while len(self.active) > self.max_runs:
            oldest, _ = self.active.popitem(last=False)
            _remember(self.evicted, oldest)
            self._evicted("run")

    def active_of(self, experiment: str | None) -> Iterable[ActiveRun]:
        """The active runs of one experiment (None: all), in the order of `active`: a rule
        about one experiment (most absence and duration rules) judges its runs, not every
        active run (100 such rules over 3,000 active runs were half of a first tick). The
        index is built when first asked for after a change, once for all rules."""
        if experiment is None:
            return self.active.values()
        changed, index = self._by_experiment
        if changed != self._changed:
            index = {}
            for run in self.active.values():
                index.setdefault(run.event.ExperimentName, []).append(run)
            self._by_experiment = (self._changed, index)
        return index.get(experiment, [])

    def _evicted(self, what: str) -> None:
        self.evictions[what] += 1
        if self._on_evict is not None:
            self._on_evict(what)

    def _tree(self, event: RunStatusEvent) -> None:
        if event.ParentRunId is None:
            tree = self.trees.get(event.RunId)
            if tree is None:
                return  # a root matters once it has children
            if tree.root is None or _newer(event, tree.root):
                tree.root = self.keep.cut(event)
            if event.is_terminal and tree.ended is None:
                tree.ended = event.TimeGenerated
            return
        root = event.root_run_id
        tree = self.trees.get(root)
        if tree is None:
            tree = self.trees[root] = Tree()
        self.trees.move_to_end(root)
        previous = tree.children.get(event.RunId)
        if previous is None or _newer(event, previous):
            tree.children[event.RunId] = self.keep.cut(event)
            if previous is None:
                self.tree_runs += 1
                while self.tree_runs > self.max_runs and len(self.trees) > 1:
                    oldest = next(iter(self.trees))
                    self.forget_tree(oldest)
                    self._evicted("tree")

    def forget_tree(self, root_id: str) -> None:
        tree = self.trees.pop(root_id, None)
        if tree is not None:
            self.tree_runs -= len(tree.children)

    def load_run(self, event: RunStatusEvent, started: datetime | None) -> None:
        """Warm-up from the store's runs table: the run's current state as one event
        (oldest first, so that the cap keeps the most recent)."""
        if self.track_trees and event.ParentRunId is not None:
            self._tree(event)
        if event.is_terminal:
            _remember(self.ended, event.RunId, _ended(event, started))
            return
        self._track(ActiveRun(self.keep.cut(event), event.TimeGenerated, started))

    def set_root(self, event: RunStatusEvent) -> None:
        """Warm-up: a root's current state, for a tree whose children were loaded."""
        tree = self.trees.get(event.RunId)
        if tree is not None:
            tree.root = self.keep.cut(event)
            if event.is_terminal:
                tree.ended = event.TimeGenerated

    def load_ended(self, run_ids: Iterable[str]) -> None:
        """Before the feed's events of runs this tracker does not know: those that ended
        before its feed begins (the store says so) are remembered as ended, as a replica
        that saw them end remembers them. Else a late Running of a run that completed
        before a warm-up made it active again, and absence and duration rules judged it."""
        if self._ended_loader is None:
            return
        unknown = {
            r for r in run_ids if r not in self.active and r not in self.ended
        } - self.evicted.keys()
        if not unknown:
            return
        for run_id, ended in sorted(self._ended_loader(unknown).items()):
            _remember(self.ended, run_id, ended)

    def _late_start(self, run_id: str, at: datetime) -> None:
        """A Running of a completed run: its duration is from its first Running, whenever
        that arrived (the store's StartTime)."""
        ended = self.ended[run_id]
        if ended is None:
            return
        experiment, completed, started = ended
        if started is None or at < started:
            started = at
            self.ended[run_id] = (experiment, completed, started)
        seconds = (completed - started).total_seconds()
        if experiment is not None and seconds >= 0:
            self._baseline(experiment).put(run_id, completed, seconds)

    # -- durations ------------------------------------------------------------------------

    def _completed(self, event: RunStatusEvent, seconds: float) -> None:
        experiment = event.ExperimentName
        if experiment is None or seconds < 0:
            return
        self._baseline(experiment).add(event.RunId, event.TimeGenerated, seconds)

    def _baseline(self, experiment: str) -> Baseline:
        durations = self._baselines.get(experiment)
        if durations is None:
            self.load_baselines((experiment,))
            durations = self._baselines[experiment]
        return durations

    def load_baselines(self, experiments: Iterable[str]) -> None:
        """The stored history of these experiments' baselines, those not loaded yet, in one
        call of the loader: a first evaluation asks about every experiment with a running
        run, and one query each was a fifth of a warm-up. Loaded before any completion the
        feed adds, whenever it is loaded (the loader's boundary is fixed), as one at a time."""
        missing = sorted({e for e in experiments if e not in self._baselines})
        if not missing:
            return
        loader = self._baseline_loader
        loaded = loader(missing, self.baseline_size) if loader is not None else {}
        for experiment in missing:
            self._baselines[experiment] = Baseline(self.baseline_size, loaded.get(experiment, ()))

    def baseline(self, experiment: str, n: int) -> list[float] | None:
        """The last `n` completed durations of `experiment` (oldest first), or None while
        fewer than `n` exist."""
        return self._baseline(experiment).last(n)
