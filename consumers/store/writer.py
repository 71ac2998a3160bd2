"""The ingest transaction's statements: idempotent inserts and the order-proof run upsert.

Everything here must give the same rows whether a batch is written once, twice (Kafka
redelivery after a crash) or with its events shuffled (producers racing on partitions).

One dialect branch: on PostgreSQL, events and folded run states go through COPY into a
session's temporary table and one `INSERT ... SELECT` each (consumers/store/staging.py); on
SQLite, through multi-row `INSERT ... VALUES` (below). The conflict clauses, the run fold and
the column lists are shared, so both give the same rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from consumers.model.events import STATUS_RANK, TERMINAL_STATUSES, RunStatusEvent, Status, to_utc
from consumers.model.redact import redact
from consumers.model.updates import RunUpdate, apply_update
from consumers.store.dialects import dialect_module
from consumers.store.listen import notify_outbox, notify_runs
from consumers.store.schema import dead_letters, events, runs
from consumers.store.staging import Stage, json_column_text
from consumers.store.timetext import sqlite_time

# What the caller records in the batch's transaction (the outbox's recorder, built by the
# layer above): given the connection and the batch's time, it writes the notification rows
# and returns how many. The store runs it; it does not know what it is.
Recording = Callable[[Connection, datetime], int]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that is not a run event, kept with where it came from and why."""

    topic: str
    partition: int
    offset: int
    reason: str
    error: str
    key: bytes | None
    payload: bytes | None
    # The message's own Kafka headers (a binary-mode CloudEvent's attributes are there): they
    # go to the dead-letter topic with it; the store keeps only the payload.
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    duplicates: int
    runs: int
    dead_letters: int
    notifications: int = 0
    updates: int = 0


def _insert(conn: Connection, table: Table, rows: int, **values: Any) -> Any:
    """INSERT of `rows` rows ... ON CONFLICT for the dialect at hand, with a typed bind per
    column (so PostgreSQL gets its ::JSON and ::TIMESTAMPTZ casts) unless `values` gives it."""
    module = dialect_module(conn.dialect.name)
    row = {c.name: None for c in table.columns if c.name != "id"} | values
    return module.insert(table).values([row] * rows)


@dataclass(frozen=True, slots=True)
class _Raw:
    """A statement compiled once per dialect and fed positional values: SQLAlchemy's per-row
    bind processing, and named binds, cost more than SQLite's own insert work (measured)."""

    sql: str
    order: tuple[str, ...]  # the columns of one row, in bind order
    convert: tuple[tuple[int, Callable[[Any], Any]], ...]

    def rows(self, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        pick = itemgetter(*self.order)  # one C call per row instead of a Python loop
        convert = self.convert
        out = []
        for row in rows:
            values = list(pick(row))
            for index, function in convert:
                values[index] = function(values[index])
            out.append(tuple(values))
        return out


# Rows per statement. One multi-row INSERT is one sqlite3_step, run with the GIL released;
# executemany releases and re-takes the GIL for every row, and while the consumer thread
# decodes the next batch each re-take waits its turn, so the two threads ran one at a time
# (measured: no gain from the writer thread at all). On PostgreSQL it is one round trip.
# 256 rows x 27 columns stays under SQLite's 32,766 and PostgreSQL's 65,535 bind limits.
CHUNK_ROWS = 256

_compiled: dict[tuple[str, str, int], _Raw] = {}


def _raw(
    conn: Connection, name: str, build: Callable[[Connection, int], Any], table: Table, count: int
) -> _Raw:
    key = (conn.dialect.name, name, count)
    raw = _compiled.get(key)
    if raw is None:
        is_sqlite = conn.dialect.name == "sqlite"
        dialect_class: Any = type(conn.dialect)
        dialect = dialect_class(paramstyle="qmark" if is_sqlite else "format")
        compiled = build(conn, count).compile(dialect=dialect)
        positions = tuple(compiled.positiontup or ())
        width = len(positions) // count
        # Multi-row binds are named <column>_m<row>, row after row.
        order = tuple(p.rpartition("_m")[0] for p in positions[:width])
        if len(positions) != width * count or not all(order):  # also under python -O
            raise RuntimeError(f"unexpected bind names for {name}: {positions[:width]}")
        types = {c.name: c.type for c in table.columns}
        convert: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(order):
            if isinstance(types[column], JSON):
                convert.append((index, json_column_text))
            elif is_sqlite and isinstance(types[column], DateTime):
                convert.append((index, sqlite_time))
        raw = _Raw(sql=compiled.string, order=order, convert=tuple(convert))
        _compiled[key] = raw
    return raw


def insert_rows(
    conn: Connection,
    name: str,
    build: Callable[[Connection, int], Any],
    table: Table,
    rows: Sequence[Mapping[str, Any]],
) -> int:
    """Insert `rows` in statements of CHUNK_ROWS rows, the tail in power-of-two sizes, so
    that a handful of statements per table is ever compiled (and cached by the driver)."""
    values = _raw(conn, name, build, table, 1).rows(rows)
    done = start = 0
    while start < len(values):
        count = min(CHUNK_ROWS, 1 << ((len(values) - start).bit_length() - 1))
        flat = tuple(chain.from_iterable(values[start : start + count]))
        result = conn.exec_driver_sql(_raw(conn, name, build, table, count).sql, flat)
        done += max(result.rowcount, 0)
        start += count
    return done


_ACTIVE_START = Status.Running
_META = (
    "ParentRunId",
    "RootRunId",
    "ExperimentName",
    "ExperimentId",
    "WorkspaceName",
    "WorkspaceId",
    "RunType",
    "TriggeringUserName",
)
_meta_of = itemgetter(*_META)


def _run_rows(batch: Sequence[RunStatusEvent]) -> list[dict[str, Any]]:
    """Fold a batch into one row per run, so the upsert touches each run once. Read from
    each event's __dict__ (a pydantic model keeps its fields there, named as the columns)
    and written in place: the writer's Python time is shared with decoding under one GIL."""
    folded: dict[str, dict[str, Any]] = {}
    rank_of, terminal = STATUS_RANK, TERMINAL_STATUSES
    for event in batch:
        fields = event.__dict__
        time, status = fields["TimeGenerated"], fields["Status"]
        rank = rank_of[status]
        row = folded.get(fields["RunId"])
        if row is None:
            row = dict(zip(_META, _meta_of(fields), strict=True))
            row["RunId"] = fields["RunId"]
            row["FirstSeen"] = row["LastSeen"] = time
            row["StartTime"] = time if status == _ACTIVE_START else None
            row["EndTime"] = time if status in terminal else None
            folded[fields["RunId"]] = row
        else:
            row["FirstSeen"] = min(row["FirstSeen"], time)
            row["LastSeen"] = max(row["LastSeen"], time)
            if status == _ACTIVE_START and (row["StartTime"] is None or time < row["StartTime"]):
                row["StartTime"] = time
            if status in terminal and (row["EndTime"] is None or time < row["EndTime"]):
                row["EndTime"] = time
            for name in _META:  # what a run is never changes: the first value seen stays
                if row[name] is None:
                    row[name] = fields[name]
            if (time, rank) <= (row["StatusTime"], row["StatusRank"]):
                continue
        row["Status"] = status
        row["StatusTime"] = time
        row["StatusRank"] = rank
        row["Message"] = fields["Message"]
        row["Tags"] = fields["Tags"]
        row["Properties"] = fields["Properties"]
        row["cause"] = fields["cause"]
    # In key order: replicas upserting overlapping runs (a rebalance, an envelope mixing run
    # trees from two partitions) then lock rows in the same order and cannot deadlock.
    return [folded[run_id] for run_id in sorted(folded)]


_LATEST = ("Status", "StatusTime", "StatusRank", "Message", "Tags", "Properties", "cause")


def _run_upsert(conn: Connection, rows: int) -> Any:
    # Description and UpdatedTime belong to run updates (_apply_updates), never to events.
    return _on_run_conflict(_insert(conn, runs, rows, Description=null(), UpdatedTime=null()))


def _on_run_conflict(stmt: Any) -> Any:
    """The order-proof merge of a folded run row into the stored one: the latest status by
    (StatusTime, StatusRank), the earliest FirstSeen/StartTime/EndTime, the latest LastSeen,
    what the run is (_META) as first seen."""
    new, old = stmt.excluded, runs.c
    newer = or_(
        new.StatusTime > old.StatusTime,
        and_(new.StatusTime == old.StatusTime, new.StatusRank > old.StatusRank),
    )

    def latest(name: str) -> ColumnElement[Any]:
        return case((newer, new[name]), else_=old[name])

    def extreme(name: str, better: Callable[[Any, Any], ColumnElement[bool]]) -> Any:
        return case(
            (better(new[name], old[name]), new[name]), else_=func.coalesce(old[name], new[name])
        )

    updates: dict[str, Any] = {name: func.coalesce(old[name], new[name]) for name in _META}
    updates |= {name: latest(name) for name in _LATEST}
    updates |= {
        "FirstSeen": extreme("FirstSeen", lambda a, b: a < b),
        "LastSeen": extreme("LastSeen", lambda a, b: a > b),
        "StartTime": extreme("StartTime", lambda a, b: a < b),
        "EndTime": extreme("EndTime", lambda a, b: a < b),
    }
    return stmt.on_conflict_do_update(index_elements=[runs.c.RunId], set_=updates)


# What COPY stages: every column but those the database or run updates fill. Derived from
# the tables, so a new column in consumers/store/schema.py (with the event field of its
# name) reaches both dialects' inserts with no edit here.
_EVENT_STAGE = Stage(
    events, tuple(c.name for c in events.columns if c.name not in ("id", "IngestedAt"))
)
_RUN_STAGE = Stage(
    runs, tuple(c.name for c in runs.columns if c.name not in ("Description", "UpdatedTime"))
)


@functools.cache
def _events_from_stage() -> Any:
    """Natural-key order: two replicas inserting the same events (a rebalance) take the
    unique index's locks in the same order and cannot deadlock."""
    stage = _EVENT_STAGE.drained()
    query = select(*(stage.c[name] for name in _EVENT_STAGE.columns), func.now()).order_by(
        stage.c.RunId, stage.c.TimeGenerated, stage.c.Status
    )
    return (
        dialect_module("postgresql")
        .insert(events)
        .from_select([*_EVENT_STAGE.columns, "IngestedAt"], query)
        .on_conflict_do_nothing()
        .execution_options(preserve_rowcount=True)
    )


@functools.cache
def _runs_from_stage() -> Any:
    """RunId order, for the same reason as the events' natural-key order."""
    stage = _RUN_STAGE.drained()
    query = select(*(stage.c[name] for name in _RUN_STAGE.columns)).order_by(stage.c.RunId)
    return _on_run_conflict(
        dialect_module("postgresql").insert(runs).from_select(_RUN_STAGE.columns, query)
    )


def _write_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """The events not stored yet; returns how many were new."""
    if conn.dialect.name == "postgresql":
        _EVENT_STAGE.copy(conn, rows)
        return max(conn.execute(_events_from_stage()).rowcount, 0)
    return insert_rows(conn, "events", _insert_events, events, rows)


def _insert_events(conn: Connection, rows: int) -> Any:
    # The database's clock: rows then come straight from the event's own fields.
    return _insert(conn, events, rows, IngestedAt=_utc_now(conn)).on_conflict_do_nothing()


def _utc_now(conn: Connection) -> Any:
    if conn.dialect.name == "sqlite":  # same text format as SQLAlchemy's DATETIME
        return literal_column("strftime('%Y-%m-%d %H:%M:%f000', 'now')")
    return func.now()


def _insert_dead_letters(conn: Connection, rows: int) -> Any:
    return _insert(conn, dead_letters, rows).on_conflict_do_nothing()


def write_batch(
    conn: Connection,
    batch: Sequence[RunStatusEvent],
    letters: Sequence[DeadLetter],
    *,
    record: Recording | None = None,
    now: datetime | None = None,
    updates: Sequence[tuple[int, RunUpdate]] = (),
    payload_cap: int | None = None,
) -> WriteResult:
    """`updates` are (position, update): the update came after the first `position` events
    of `batch` on the topic, and is applied to the run state there, in topic order.
    A dead letter's payload is stored up to `payload_cap` bytes; PayloadBytes is its size."""
    now = to_utc(now) if now is not None else datetime.now(UTC)
    inserted = run_count = letter_count = 0
    if batch:
        # A pydantic model keeps its fields in __dict__, named as the columns.
        rows = [event.__dict__ for event in batch]
        inserted = _write_events(conn, rows)
        notify_runs(conn, (event.RunId for event in batch))  # wakes Run.wait_for_completion
    start = 0
    for position, group in groupby(updates, key=itemgetter(0)):
        run_count += _upsert_runs(conn, batch[start:position])
        start = max(start, position)
        _apply_updates(conn, [item for _, item in group])
    run_count += _upsert_runs(conn, batch[start:])
    if letters:
        letter_rows = [
            {
                "SourceTopic": letter.topic,
                "SourcePartition": letter.partition,
                "SourceOffset": letter.offset,
                "Reason": letter.reason,
                "Error": redact(letter.error),  # no credential is stored
                "MessageKey": letter.key,
                "Payload": _capped(letter.payload, payload_cap),
                "PayloadBytes": len(letter.payload or b""),
                "ReceivedAt": now,
            }
            for letter in letters
        ]
        letter_count = insert_rows(
            conn, "dead_letters", _insert_dead_letters, dead_letters, letter_rows
        )
    created = record(conn, now) if record is not None else 0
    if created:
        notify_outbox(conn)  # wakes the dispatchers of every replica once this commits
    return WriteResult(
        inserted=inserted,
        duplicates=len(batch) - inserted,
        runs=run_count,
        dead_letters=letter_count,
        notifications=created,
        updates=len(updates),
    )


def _capped(payload: bytes | None, cap: int | None) -> bytes | None:
    """A 100 MB message (the consumer fetches up to that) must not become a 100 MB row."""
    return payload if payload is None or cap is None else payload[:cap]


def _upsert_runs(conn: Connection, batch: Sequence[RunStatusEvent]) -> int:
    if not batch:
        return 0
    run_rows = _run_rows(batch)
    if conn.dialect.name == "postgresql":
        _RUN_STAGE.copy(conn, run_rows)
        conn.execute(_runs_from_stage())
    else:
        insert_rows(conn, "runs", _run_upsert, runs, run_rows)
    return len(run_rows)


# A run known only from an update: any status event, however old, is newer than this one.
_NO_STATUS_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_UPDATED = ("Tags", "Properties", "Description", "UpdatedTime", "LastSeen")


def _apply_updates(conn: Connection, batch: Sequence[RunUpdate]) -> None:
    """Read-modify-write of the runs touched, in topic order. One run tree lives in one
    partition, which one consumer owns, so nobody else writes these rows meanwhile (and
    PostgreSQL row locks cover a rebalance handing the partition over)."""
    ids = list(dict.fromkeys(u.RunId for u in batch))
    query = select(runs.c.RunId, *(runs.c[name] for name in _UPDATED)).where(runs.c.RunId.in_(ids))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    state = {row.RunId: dict(row._mapping) for row in conn.execute(query)}
    for item in batch:
        if item.RunId not in state:
            module = dialect_module(conn.dialect.name)
            conn.execute(module.insert(runs).values(_placeholder(item)).on_conflict_do_nothing())
            state[item.RunId] = {"Tags": {}, "Properties": {}, "Description": None}
            state[item.RunId] |= {"UpdatedTime": None, "LastSeen": item.TimeGenerated}
    for item in batch:
        row = state[item.RunId]
        row["Tags"], row["Properties"] = apply_update(
            dict(row["Tags"] or {}), dict(row["Properties"] or {}), item
        )
        if item.Description is not None:
            row["Description"] = item.Description
        row["UpdatedTime"] = _later(row["UpdatedTime"], item.TimeGenerated)
        row["LastSeen"] = _later(row["LastSeen"], item.TimeGenerated)
    stmt = (
        update(runs)
        .where(runs.c.RunId == bindparam("run_id"))
        .values({name: bindparam(f"new_{name}", type_=runs.c[name].type) for name in _UPDATED})
    )
    conn.execute(
        stmt,
        [
            {"run_id": run_id} | {f"new_{name}": row[name] for name in _UPDATED}
            for run_id, row in state.items()
        ],
    )


def _placeholder(item: RunUpdate) -> dict[str, Any]:
    return {
        "RunId": item.RunId,
        "ParentRunId": item.ParentRunId,
        "RootRunId": item.RootRunId,
        "ExperimentName": item.ExperimentName,
        "WorkspaceName": item.WorkspaceName,
        "Status": Status.NotStarted.value,
        "StatusTime": _NO_STATUS_TIME,
        "StatusRank": -1,
        "Tags": {},
        "Properties": {},
        "FirstSeen": item.TimeGenerated,
        "LastSeen": item.TimeGenerated,
    }


def _later(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None else max(to_utc(current), candidate)


def delete_batch_older_than(
    conn: Connection, cutoff: datetime, limit: int, events_table: Table | None = None
) -> int:
    """At most `limit` rows of each table; the caller loops until a short batch.

    A run's state row goes only once the run has ended: a run stuck in Running for longer
    than the retention is exactly what absence rules look for."""
    cutoff = to_utc(cutoff)
    deleted = 0
    ev = events if events_table is None else events_table
    for table, old, key in (
        (ev, ev.c.TimeGenerated < cutoff, ev.c.id),
        (runs, and_(runs.c.LastSeen < cutoff, runs.c.Status.in_(TERMINAL_STATUSES)), runs.c.RunId),
        (dead_letters, dead_letters.c.ReceivedAt < cutoff, dead_letters.c.id),
    ):
        doomed = select(key).where(old).limit(limit).scalar_subquery()
        result = conn.execute(delete(table).where(key.in_(doomed)))
        deleted = max(deleted, result.rowcount)
    return deleted
