"""The scheduled rules' window snapshot, kept by the evaluation lease's holder: what lets a
replica that starts, takes the lease over or reloads the rules evaluate within a second
instead of replaying the longest window (docs/deploys.md, "Rule warm-up").

Writing: each tick's transaction carries the window states of changed rules, oldest first,
up to `budget` bytes (a tick of a busy store changes nearly every rule, and all of them
would be megabytes), and the feed's position. A row not rewritten although its rule changed
is recorded as behind, with the position it is current at. Warm-up: each loaded rule is
fed only what came after its own row's position, so the counts are exactly those of a
replica that never stopped; the rules without a usable row replay their own window.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from consumers.model.events import RunStatusEvent
from consumers.rules.evaluation import Evaluation
from consumers.store.engine import Store
from consumers.store.feed import EventFeed, Position, events_between, events_by_key
from consumers.store.rule_windows import load_snapshot, save_snapshot

DEFAULT_BUDGET = 512 * 1024  # bytes of window state written per tick (at least one rule)
# A snapshot further behind the events than this is not caught up from (the first tick would
# read more than a replay of the window): the rules replay as if there were none.
CATCH_UP_EVENTS = 50_000


@dataclass(frozen=True, slots=True)
class WarmUp:
    """What the last warm-up did: window states loaded, rules replayed (and the events
    read for them), events stored after the oldest loaded row for the first tick to read."""

    loaded: int
    replayed: tuple[str, ...]
    replayed_events: int
    behind: int


@dataclass(frozen=True, slots=True)
class Pending:
    """One tick's share of the snapshot, written in its transaction."""

    at: Position
    rows: dict[str, tuple[str, str]]
    row_at: dict[str, Position | None]  # where each rule's row stands once written
    keep: frozenset[str] | None  # the first write after a warm-up: the rows to keep
    saved: tuple[int, frozenset[int], frozenset[tuple[str, int]]]

    def behind(self) -> dict[str, Position]:
        """The rows not current at `at`: at these earlier positions."""
        return {n: p for n, p in self.row_at.items() if p is not None and p is not self.at}


class _Skipping:
    """Which loaded rows counted an event already: those at or above its id, less those
    missing it (one of their gaps). The rows stand at a few positions (one per tick that
    wrote some), so the sets are made once per position, not once per event per rule (the
    catch-up after a warm-up compared 300 rows for each of 1,400 events)."""

    def __init__(self, skips: list[tuple[int, frozenset[int], str]]) -> None:
        self._cursors = sorted({c for c, _, _ in skips})
        # _sets[i]: the rules whose rows stand at or above _cursors[i]
        self._sets: list[frozenset[str]] = []
        names: set[str] = set()
        for cursor in reversed(self._cursors):
            names |= {n for c, _, n in skips if c == cursor}
            self._sets.append(frozenset(names))
        self._sets.reverse()
        self._gaps = [(gaps, n) for _, gaps, n in skips if gaps]

    def rules(self, event_id: int) -> frozenset[str]:
        at = bisect_left(self._cursors, event_id)
        if at == len(self._cursors):
            return frozenset()
        rules = self._sets[at]
        missing = [n for gaps, n in self._gaps if event_id in gaps]
        return rules.difference(missing) if missing else rules


class WindowSnapshots:
    def __init__(
        self,
        store: Store,
        feed: EventFeed,
        *,
        budget: int = DEFAULT_BUDGET,
        catch_up: Callable[[], int] = lambda: CATCH_UP_EVENTS,
    ) -> None:
        self._store = store
        self._feed = feed
        self.budget = budget
        self._catch_up = catch_up
        self._row_at: dict[str, Position | None] = {}  # where each rule's stored row stands
        self._saved: tuple[int, frozenset[int], frozenset[tuple[str, int]]] | None = None
        # The first write after a warm-up drops the rows of other rules, and those of rules
        # replayed (stale, damaged) that it does not rewrite: no row is better than a wrong one.
        self._prune = False
        self._skips: list[tuple[int, frozenset[int], str]] = []  # rows ahead of the feed
        self._skip_below = 0  # ids above this concern no row ahead of the feed
        self._skipping = _Skipping([])

    def warm_up(self, evaluation: Evaluation, now: datetime) -> WarmUp:
        """Load the snapshot into `evaluation`, set the feed where the oldest loaded row
        stands, replay the rules without a usable row."""
        snapshot = load_snapshot(self._store)
        last = self._feed.last_id()
        at = snapshot.at
        wanted = [n for n in evaluation.windowed if n in snapshot.rules]
        positions = {} if at is None else {n: snapshot.behind.get(n, at) for n in wanted}
        start = min([p.cursor for p in positions.values()], default=at.cursor if at else 0)
        if at is not None and 0 <= last - start <= self._catch_up():
            gaps: dict[int, float] = {}
            for position in [at, *positions.values()]:
                for gap, first in position.gaps.items():
                    if gap < start:
                        gaps[gap] = min(first, gaps.get(gap, first))
            self._feed.resume(Position(start, gaps))
            stored = snapshot.rules
        else:
            self._feed.start_at_end()
            positions, stored = {}, {}
        replay = evaluation.restore(stored, lambda keys: events_by_key(self._store, keys))
        span = evaluation.replay_span(replay, now)
        replayed = 0
        if span is not None:
            since, statuses = span
            events = events_between(
                self._store,
                since,
                max_id=self._feed.cursor,
                statuses=statuses,
                skip=self._feed.gaps,  # the feed delivers these if they come
            )
            replayed = evaluation.replay(events, replay, now)
        loaded = {n: p for n, p in positions.items() if n not in replay}
        feed_gaps = self._feed.gaps
        self._skips = [
            (p.cursor, frozenset(p.gaps), n)
            for n, p in loaded.items()
            if p.cursor > self._feed.cursor or not feed_gaps <= frozenset(p.gaps)
        ]
        self._skip_below = max((c for c, _, _ in self._skips), default=0)
        self._skipping = _Skipping(self._skips)
        self._row_at = {n: loaded.get(n) for n in evaluation.windowed}
        self._saved, self._prune = None, True
        return WarmUp(len(loaded), tuple(replay), replayed, last - self._feed.cursor)

    def observe(self, evaluation: Evaluation, fresh: list[tuple[int, RunStatusEvent]]) -> None:
        """Feed the new events to the evaluation; one at or below a loaded row's position
        (not among its gaps) was counted in that row already, and skips its rule."""
        evaluation.before_observing(event for _, event in fresh)
        below = self._skip_below
        for event_id, event in fresh:
            if event_id > below:
                evaluation.observe(event)
                continue
            evaluation.observe(event, skip=self._skipping.rules(event_id))

    def take(self, evaluation: Evaluation) -> Pending | None:
        """This tick's share of the snapshot; None when nothing is to be written."""
        at = self._feed.position()
        dirty = evaluation.dirty_windows()
        dirty.sort(key=lambda n: -1 if (p := self._row_at.get(n)) is None else p.cursor)
        rows: dict[str, tuple[str, str]] = {}
        size = 0
        for name in dirty:
            if rows and size >= self.budget:
                break
            rows[name] = evaluation.take_window(name)
            size += len(rows[name][1])
        still = set(evaluation.dirty_windows())
        row_at = {n: (self._row_at.get(n) if n in still else at) for n in evaluation.windowed}
        keep = None
        if self._prune:
            keep = frozenset(n for n, p in row_at.items() if p is not None or n in rows)
        behind = {n: p for n, p in row_at.items() if p is not None and p is not at}
        saved = (at.cursor, frozenset(at.gaps), frozenset((n, p.cursor) for n, p in behind.items()))
        pending = Pending(at, rows, row_at, keep, saved)
        if not rows and not self._prune and saved == self._saved:
            return None
        return pending

    def write(self, conn: Connection, pending: Pending, now: datetime) -> None:
        """In the tick's transaction."""
        save_snapshot(
            conn,
            at=pending.at,
            behind=pending.behind(),
            rules=pending.rows,
            now=now,
            keep=pending.keep,
        )

    def written(self, pending: Pending) -> None:
        """After the transaction committed."""
        self._row_at = pending.row_at
        self._saved = pending.saved
        self._prune = False
        if self._skips and self._feed.cursor > self._skip_below and not self._feed.gaps:
            self._skips, self._skip_below = [], 0  # caught up: no row is ahead any more
            self._skipping = _Skipping([])
