"""Reading the store for the scheduled kinds: new events since a cursor, a time range of
events, the runs that have not ended, and experiment baselines.

New events are found by the events table's id, not by time: late events (a backfill, a slow
producer) arrive with old TimeGenerated but new ids, and an id range query is an index scan
that costs the same whatever the size of the history. On PostgreSQL ids commit out of order
(and inserts that hit a duplicate burn ids), so ids skipped below the cursor are looked up
again for `gap_s` seconds before they are given up as never coming.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, literal_column, or_, select, tuple_, union_all

from consumers.model.durations import BaselineLoader, BaselineRun, EndedLoader, EndedRun
from consumers.model.events import TERMINAL_STATUSES, RunStatusEvent, Status, to_utc
from consumers.store.engine import Store
from consumers.store.schema import events, runs

_EVENT_COLUMNS = [c for c in events.c if c.name not in ("id", "IngestedAt")]
_RUN_FIELDS = (
    "RunId",
    "ParentRunId",
    "RootRunId",
    "ExperimentName",
    "ExperimentId",
    "WorkspaceName",
    "WorkspaceId",
    "RunType",
    "TriggeringUserName",
    "Message",
    "Tags",
    "Properties",
)
_LARGE = ("Message", "Tags", "Properties")  # run columns read only if a rule reads them
_CHUNK = 5000
_RUN_CHUNK = 25
_ID_CHUNK = 500  # run ids per IN list
_MAX_GAPS = 10_000
_BASELINE_CHUNK = 100  # experiments per statement (SQLite allows 500 compound terms)
_COMPLETED: ColumnElement[str] = literal_column(f"'{Status.Completed.value}'")

log = logging.getLogger(__name__)


# Events built from rows copy this one: a copy with the row's values is a quarter of the
# cost of `model_construct`, which resolves every default (tens of thousands at a warm-up).
_BLANK = RunStatusEvent.model_construct(
    TimeGenerated=datetime(1970, 1, 1, tzinfo=UTC), RunId="-", Status=Status.Queued.value
)


def event_of(row: Any) -> RunStatusEvent:
    """A stored row is already validated: build the model without validating it again."""
    values = dict(row._mapping)
    values.pop("id", None)
    values["TimeGenerated"] = to_utc(values["TimeGenerated"])
    return _BLANK.model_copy(update=values)


def run_event(row: Any) -> tuple[RunStatusEvent, datetime | None]:
    """A run's current state as the event that set it, and its start (first Running). The
    large columns the query left out (`current_runs(columns=...)`) are empty, as cutting
    them would leave them (consumers.rules.reads)."""
    values = dict(row._mapping)
    started = values.pop("StartTime")
    values["TimeGenerated"] = to_utc(values.pop("StatusTime"))
    values["Tags"] = values.get("Tags") or {}
    values["Properties"] = values.get("Properties") or {}
    values["Level"] = "Informational"
    return _BLANK.model_copy(update=values), None if started is None else to_utc(started)


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the events table: every id up to `cursor` read except `gaps` (id ->
    epoch seconds when it was first missed)."""

    cursor: int
    gaps: Mapping[int, float] = field(default_factory=dict)


class EventFeed:
    """The events stored since the last read, in id order.

    The feed is what the scheduler has seen: rows up to `start` (the last id at the
    warm-up) are history the warm-up reads from the store, every later row is delivered
    here once. Whatever the warm-up loads is bounded by `start`, never by a time.
    """

    def __init__(self, store: Store, *, gap_s: float = 60.0) -> None:
        self._store = store
        self.cursor = 0
        self.start = 0
        self._gap_s = gap_s
        self._gaps: dict[int, float] = {}  # id -> monotonic time it was first missed

    def last_id(self) -> int:
        """The highest id stored now."""
        with self._store.engine.connect() as conn:
            last = select(events.c.id).order_by(events.c.id.desc()).limit(1)
            return int(conn.execute(last).scalar() or 0)

    def start_at_end(self) -> None:
        self.cursor = self.start = self.last_id()
        self._gaps.clear()

    def resume(self, at: Position) -> None:
        """Go on from a saved position (`position()`); a gap is given up `gap_s` after it
        was first missed, whoever missed it."""
        self.cursor = self.start = at.cursor
        monotonic, wall = time.monotonic(), time.time()
        self._gaps = {
            i: monotonic - max(0.0, wall - t) for i, t in at.gaps.items() if i < at.cursor
        }

    def position(self) -> Position:
        monotonic, wall = time.monotonic(), time.time()
        return Position(self.cursor, {i: wall - (monotonic - t) for i, t in self._gaps.items()})

    @property
    def gaps(self) -> frozenset[int]:
        return frozenset(self._gaps)

    def read(self, limit: int = 50_000) -> list[RunStatusEvent]:
        return [event for _, event in self.read_with_ids(limit)]

    def read_with_ids(self, limit: int = 50_000) -> list[tuple[int, RunStatusEvent]]:
        """The new events and their ids: late-found gaps first, then in id order."""
        query = (
            select(events.c.id, *_EVENT_COLUMNS)
            .where(events.c.id > self.cursor)
            .order_by(events.c.id)
            .limit(limit)
        )
        now = time.monotonic()
        with self._store.engine.connect() as conn:
            rows = list(conn.execute(query))
            found = []
            if self._gaps:
                expired = [i for i, t in self._gaps.items() if now - t > self._gap_s]
                for gap in expired:
                    del self._gaps[gap]
                wanted = list(self._gaps)
                for start in range(0, len(wanted), 1000):
                    found += list(
                        conn.execute(
                            select(events.c.id, *_EVENT_COLUMNS).where(
                                events.c.id.in_(wanted[start : start + 1000])
                            )
                        )
                    )
        for row in found:
            self._gaps.pop(row.id, None)
        expected = self.cursor + 1
        for row in rows:
            if row.id > expected and len(self._gaps) < _MAX_GAPS:
                for missing in range(expected, min(row.id, expected + _MAX_GAPS)):
                    self._gaps[missing] = now
            expected = row.id + 1
        if rows:
            self.cursor = rows[-1].id
        return [(row.id, event_of(row)) for row in found + rows]


def events_between(
    store: Store,
    since: datetime,
    until: datetime | None = None,
    *,
    max_id: int | None = None,
    statuses: Collection[str] | None = None,
    skip: Collection[int] = (),
) -> Iterator[RunStatusEvent]:
    """Events with since <= TimeGenerated (< until), oldest first, streamed in chunks;
    only those stored up to `max_id` if given (the feed reads the later ones), only those
    in `statuses` if given, none of the ids in `skip` (the feed's gaps: it reads those)."""
    condition = events.c.TimeGenerated >= since
    if until is not None:
        condition = and_(condition, events.c.TimeGenerated < until)
    if max_id is not None:
        condition = and_(condition, events.c.id <= max_id)
    if statuses is not None:
        condition = and_(condition, events.c.Status.in_(sorted(statuses)))
    query = (
        select(events.c.id, *_EVENT_COLUMNS)
        .where(condition)
        .order_by(events.c.TimeGenerated, events.c.id)
        .execution_options(yield_per=_CHUNK)
    )
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            if not skip or row.id not in skip:
                yield event_of(row)


def events_by_key(
    store: Store, keys: Collection[tuple[str, str, str]]
) -> dict[tuple[str, str, str], RunStatusEvent]:
    """The stored events of these natural keys (RunId, TimeGenerated in ISO 8601, Status),
    those there are: a window snapshot's example events (consumers.rules.windows)."""
    wanted = sorted(keys)
    found: dict[tuple[str, str, str], RunStatusEvent] = {}
    key = tuple_(events.c.RunId, events.c.TimeGenerated, events.c.Status)
    with store.engine.connect() as conn:
        for start in range(0, len(wanted), _ID_CHUNK):
            chunk = []
            for run_id, time_generated, status in wanted[start : start + _ID_CHUNK]:
                try:
                    chunk.append((run_id, datetime.fromisoformat(time_generated), status))
                except ValueError:
                    continue  # not a time: not stored either
            query = select(*_EVENT_COLUMNS).where(key.in_(chunk))
            for row in conn.execute(query) if chunk else ():
                event = event_of(row)
                found[(event.RunId, event.TimeGenerated.isoformat(), event.Status)] = event
    return found


def earliest_event(store: Store) -> datetime | None:
    with store.engine.connect() as conn:
        value = conn.execute(
            select(events.c.TimeGenerated).order_by(events.c.TimeGenerated).limit(1)
        ).scalar()
    return None if value is None else to_utc(value)


def current_runs(
    store: Store, tree_since: datetime | None, columns: Collection[str] | None = None
) -> Iterator[tuple[RunStatusEvent, datetime | None]]:
    """Runs that have not ended, and (for roll-ups) runs of trees active since
    `tree_since`: children seen since then and their roots. Of the large columns (Message,
    Tags, Properties) only those in `columns` are read (None: all): the rules' trackers
    keep only what the rules read, and reading and decoding every run's tags was a tenth of
    a warm-up."""
    active = runs.c.Status.not_in(sorted(TERMINAL_STATUSES))
    condition: ColumnElement[bool] = active
    if tree_since is not None:
        condition = or_(active, runs.c.LastSeen >= tree_since)
    large = [c for c in _LARGE if columns is None or c in columns]
    read = [
        runs.c[c]
        for c in (*_RUN_FIELDS, "StatusTime", "Status", "StartTime")
        if c not in _LARGE or c in large
    ]
    # Oldest change first: the run tracker's cap then keeps the most recently changed.
    query = select(*read).where(condition).order_by(runs.c.LastSeen, runs.c.RunId)
    # Small chunks when they carry tags and properties, which may be large (the tracker keeps
    # only what its rules read of them); without them a run is a short row.
    chunk = _RUN_CHUNK if large else _CHUNK
    with store.engine.connect() as conn:
        for row in conn.execute(query.execution_options(yield_per=chunk)):
            yield run_event(row)


def last_seen(store: Store) -> Callable[[Collection[str]], dict[str, datetime]]:
    """The runs' LastSeen (latest status event or run update, heartbeats included), for
    absence rules with `since: last_seen`; one indexed lookup per run asked about."""

    def read(run_ids: Collection[str]) -> dict[str, datetime]:
        ids = list(run_ids)
        found: dict[str, datetime] = {}
        with store.engine.connect() as conn:
            for start in range(0, len(ids), _ID_CHUNK):
                query = select(runs.c.RunId, runs.c.LastSeen).where(
                    runs.c.RunId.in_(ids[start : start + _ID_CHUNK])
                )
                found.update((row.RunId, to_utc(row.LastSeen)) for row in conn.execute(query))
        return found

    return read


def run_details(store: Store) -> Callable[[RunStatusEvent], RunStatusEvent]:
    """For an alert about to fire on a run the tracker keeps cut down (consumers.rules.reads):
    the run's tags, properties and message back from the `runs` table, so that the
    notification, its routing and silences see them. Best effort: if the store cannot say,
    the alert goes out with what the tracker kept rather than not at all."""

    def describe(event: RunStatusEvent) -> RunStatusEvent:
        query = select(runs.c.Tags, runs.c.Properties, runs.c.Message).where(
            runs.c.RunId == event.RunId
        )
        try:
            with store.engine.connect() as conn:
                row = conn.execute(query).first()
        except Exception as exc:  # an alert without its tags beats no alert
            log.warning("run %s: details not read from the store: %s", event.RunId, exc)
            return event
        if row is None:
            return event
        update: dict[str, Any] = {"Tags": row.Tags or {}, "Properties": row.Properties or {}}
        if event.Message is None:
            update["Message"] = row.Message
        return event.model_copy(update=update)

    return describe


def baseline_loader(
    store: Store, *, stored_up_to: int | None = None, ended_before: datetime | None = None
) -> BaselineLoader:
    """The last n completed runs of each experiment asked about, by completion time (EndTime,
    then RunId: the order of consumers.rules.tracker.Baseline), as (run id, completion time,
    seconds), oldest first: those the caller is not fed. The live scheduler's boundary is
    the feed's own, a row id (`stored_up_to`: the run's completion was stored at or below
    it), not a time: a run that completed before the warm-up but was stored after it is the
    feed's to deliver. The dry run replays by time, so its boundary is a time
    (`ended_before`). Either way the tracker counts a run once
    (consumers.rules.tracker.Baseline).

    One statement for many experiments (a UNION ALL of one limited branch each, the same
    query as for one): a first evaluation of 100 duration rules asked for 50 experiments,
    one round trip each. Each branch is a range of the partial index ix_runs_completed;
    RunId breaks ties of EndTime, so the runs chosen do not depend on the plan. Not LastSeen:
    it is the run's latest event of any kind (a late heartbeat or Running), so its order is
    that of arrival, not of completion."""

    def branch(experiment: str, n: int) -> Select[Any]:
        query = (
            select(
                runs.c.ExperimentName,
                runs.c.RunId,
                runs.c.StartTime,
                runs.c.EndTime,
            )
            .where(
                runs.c.ExperimentName == experiment,
                runs.c.Status == _COMPLETED,  # a literal: the partial index's condition
                runs.c.StartTime.is_not(None),
                runs.c.EndTime.is_not(None),
            )
            .order_by(runs.c.EndTime.desc(), runs.c.RunId.desc())
            .limit(n)
        )
        if stored_up_to is not None:
            completion = select(events.c.id).where(
                events.c.RunId == runs.c.RunId,
                events.c.Status == Status.Completed.value,
                events.c.id <= stored_up_to,
            )
            query = query.where(completion.exists())
        if ended_before is not None:
            query = query.where(runs.c.EndTime <= ended_before)
        return query

    def load(experiments: Collection[str], n: int) -> dict[str, list[BaselineRun]]:
        wanted = sorted(set(experiments))
        found: dict[str, list[tuple[datetime, str, float]]] = {e: [] for e in wanted}
        with store.engine.connect() as conn:
            for start in range(0, len(wanted), _BASELINE_CHUNK):
                chunk = [branch(e, n).subquery() for e in wanted[start : start + _BASELINE_CHUNK]]
                parts = [select(*b.c) for b in chunk]
                query = union_all(*parts) if len(parts) > 1 else parts[0]
                for row in conn.execute(query):
                    ended = to_utc(row.EndTime)
                    seconds = (ended - to_utc(row.StartTime)).total_seconds()
                    found[row.ExperimentName].append((ended, row.RunId, seconds))
        return {e: [(run, t, s) for t, run, s in sorted(rows)] for e, rows in found.items()}

    return load


def ended_loader(store: Store, *, stored_up_to: int) -> EndedLoader:
    """Of the runs asked about, those whose end (a terminal event) was stored at or below
    `stored_up_to`, the feed's boundary: the runs a replica that never stopped saw end, and
    a warmed-up one does not know (it loads the runs that have not ended). Completed ones
    with their experiment, EndTime and StartTime, for their baseline duration. One indexed
    lookup per run asked about."""
    terminal = sorted(TERMINAL_STATUSES)

    def load(run_ids: Collection[str]) -> dict[str, EndedRun]:
        ids = sorted(run_ids)
        ended: dict[str, Any] = {}
        with store.engine.connect() as conn:
            for start in range(0, len(ids), _ID_CHUNK):
                query = select(
                    runs.c.RunId,
                    runs.c.Status,
                    runs.c.ExperimentName,
                    runs.c.StartTime,
                    runs.c.EndTime,
                ).where(
                    runs.c.RunId.in_(ids[start : start + _ID_CHUNK]), runs.c.Status.in_(terminal)
                )
                ended.update((row.RunId, row) for row in conn.execute(query))
            # Then, for the few that ended (a late event of an ended run is rare), whether
            # the end was stored by then: a second query, not a correlated one per run,
            # which PostgreSQL without statistics planned as a scan of every event.
            stored: set[str] = set()
            wanted = sorted(ended)
            for start in range(0, len(wanted), _ID_CHUNK):
                query = select(events.c.RunId).where(
                    events.c.RunId.in_(wanted[start : start + _ID_CHUNK]),
                    events.c.Status.in_(terminal),
                    events.c.id <= stored_up_to,
                )
                stored.update(conn.execute(query).scalars())
        found: dict[str, EndedRun] = {}
        for run_id in stored:
            row = ended[run_id]
            completed = row.Status == Status.Completed.value and row.EndTime is not None
            found[run_id] = (
                (
                    row.ExperimentName,
                    to_utc(row.EndTime),
                    None if row.StartTime is None else to_utc(row.StartTime),
                )
                if completed
                else None
            )
        return found

    return load
