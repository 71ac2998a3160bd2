"""What this process published, per run, so that every read can wait until the store shows it.

Read-your-writes lives here and nowhere else. `Workspace.publish` records each status event
and run-update record once the broker has it. A read first asks the ledger which of the runs
it could return still have a change the store has not been seen to show (`pending_*`), polls
the store's progress for those runs until it does (`settle`), and only then reads. The store
only moves forward (a run's StatusTime and UpdatedTime never decrease), so whatever the read
fetches afterwards shows those changes too. A run the store has shown is dropped from the
pending set, so a read of settled runs costs no extra query.

Pure bookkeeping, no I/O. One ledger per destination (bootstrap servers, topic, store) in the
process, shared by every Workspace that publishes there.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the store has got with one run: its `runs` row's StatusTime and UpdatedTime."""

    status_time: datetime
    updated_time: datetime | None


@dataclass(frozen=True, slots=True)
class Mark:
    """The newest change of one run this process published and the store was not yet seen to
    show: the time of its latest status event and of its latest run-update record."""

    status_time: datetime | None = None
    update_time: datetime | None = None

    def shown_by(self, progress: Progress | None) -> bool:
        if progress is None:
            return False
        if self.status_time is not None and progress.status_time < self.status_time:
            return False
        return self.update_time is None or (
            progress.updated_time is not None and progress.updated_time >= self.update_time
        )

    def then(self, later: Mark) -> Mark:
        return Mark(
            _latest(self.status_time, later.status_time),
            _latest(self.update_time, later.update_time),
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a run sits, which decides the reads that could return it. Fixed for a run."""

    parent_id: str | None
    tree: str  # the Kafka key: the tree's root (RootRunId, else ParentRunId, else RunId)
    workspace: str | None
    experiment: str | None


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


class Ledger:
    """Thread-safe: a script may publish from several threads while another one reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._placed: dict[str, Placement] = {}
        self._latest: dict[str, datetime] = {}
        self._pending: dict[str, Mark] = {}

    def published(self, run_id: str, placement: Placement, mark: Mark) -> None:
        """One change is on the broker: reads that could return this run wait for it."""
        with self._lock:
            self._placed.setdefault(run_id, placement)
            newest = _latest(mark.status_time, mark.update_time)
            latest = _latest(self._latest.get(run_id), newest)
            if latest is not None:
                self._latest[run_id] = latest
            pending = self._pending.get(run_id)
            self._pending[run_id] = mark if pending is None else pending.then(mark)

    def latest(self, run_id: str) -> datetime | None:
        """The newest time this process published for the run (its next must be later)."""
        with self._lock:
            return self._latest.get(run_id)

    # ---- what a read must wait for ----------------------------------------------------
    def pending_run(self, run_id: str) -> dict[str, Mark]:
        with self._lock:
            mark = self._pending.get(run_id)
            return {} if mark is None else {run_id: mark}

    def pending_children(self, parent_id: str) -> dict[str, Mark]:
        with self._lock:
            return {
                run_id: mark
                for run_id, mark in self._pending.items()
                if self._placed[run_id].parent_id == parent_id
            }

    def pending_descendants(self, run_id: str, tree: str) -> dict[str, Mark]:
        """Runs under `run_id` at any depth. A run whose chain of parents passes through one
        this process never published (found in the store) is counted in when it is in the
        same `tree`: the read may then wait a little longer than needed (one tree shares one
        partition, consumed in order), but it never returns short."""
        with self._lock:
            return {
                pending_id: mark
                for pending_id, mark in self._pending.items()
                if (below := self._below(pending_id, run_id))
                or (below is None and self._placed[pending_id].tree == tree)
            }

    def _below(self, candidate: str, ancestor: str) -> bool | None:
        """Is `ancestor` up the chain of parents? None: the chain leaves what is known here."""
        seen: set[str] = set()
        parent = self._placed[candidate].parent_id
        while parent is not None and parent not in seen:
            if parent == ancestor:
                return True
            seen.add(parent)
            placement = self._placed.get(parent)
            if placement is None:
                return None
            parent = placement.parent_id
        return False

    def pending_experiment(
        self, workspace: str, experiment: str, *, roots_only: bool
    ) -> dict[str, Mark]:
        with self._lock:
            return {
                run_id: mark
                for run_id, mark in self._pending.items()
                if (placed := self._placed[run_id]).workspace == workspace
                and placed.experiment == experiment
                and not (roots_only and placed.parent_id is not None)
            }

    def settle(
        self, marks: Mapping[str, Mark], progress: Mapping[str, Progress]
    ) -> dict[str, Mark]:
        """Drop the marks the store now shows; return the ones it does not show yet. A change
        published meanwhile (a newer mark for the same run) stays pending."""
        behind: dict[str, Mark] = {}
        with self._lock:
            for run_id, mark in marks.items():
                seen = progress.get(run_id)
                if not mark.shown_by(seen):
                    behind[run_id] = mark
                    continue
                current = self._pending.get(run_id)
                if current is not None and current.shown_by(seen):
                    del self._pending[run_id]
        return behind


_ledgers: dict[tuple[str, ...], Ledger] = {}
_ledgers_lock = threading.Lock()


def ledger_for(destination: tuple[str, ...]) -> Ledger:
    """The process's ledger for one destination (where the events go and are read back)."""
    with _ledgers_lock:
        ledger = _ledgers.get(destination)
        if ledger is None:
            ledger = _ledgers[destination] = Ledger()
        return ledger
