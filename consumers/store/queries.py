"""Read-only queries behind `runwatch runs ...` and `runwatch dead-letters ...`.

Plain SQLAlchemy Core, so one code path serves SQLite and PostgreSQL. Tags, properties and
JMESPath are matched in Python, not with dialect-specific JSON SQL: the SQL narrows the rows
on indexed columns, the rows are streamed, and `limit` counts only rows that passed every
filter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from sqlalchemy import ColumnElement, Row, Select, case, func, or_, select
from sqlalchemy.types import LargeBinary

from consumers.model.events import STATUS_RANK, TERMINAL_STATUSES, Status, parse_status, to_utc
from consumers.store.engine import Store
from consumers.store.schema import dead_letters, events, runs

_GLOB_CHARS = frozenset("*?[")
_CAUSE_WORDS = re.compile(r"[a-z][a-z0-9_]{0,39}")  # as the cause table names them
_PREVIEW_CHARS = 120
# A character is at most 4 UTF-8 bytes, so 4x the preview length always yields enough text.
_PREVIEW_BYTES = 4 * _PREVIEW_CHARS
_STREAM_ROWS = 500
# SQLAlchemy 2.1 types rows and selects by their column tuple; these hold any columns.
AnyRow = Row[*tuple[Any, ...]]
AnySelect = Select[*tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What `runs list` asks for. Validated on construction, so a CLI typo fails before the
    store is opened; statuses are stored canonical and the JMESPath compiled once."""

    experiment: str | None = None
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    tags: tuple[tuple[str, str | None], ...] = ()
    properties: tuple[tuple[str, str], ...] = ()
    query: str | None = None
    limit: int = 100
    cause: str | None = None  # a cause or a word of one: "oom" is cuda_oom and host_oom
    _compiled: ParsedResult | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        canonical = []
        for status in self.statuses:
            try:
                canonical.append(parse_status(status))
            except ValueError:
                known = ", ".join(s.value for s in Status)
                raise ValueError(f"unknown status {status!r} (expected one of {known})") from None
        object.__setattr__(self, "statuses", tuple(dict.fromkeys(canonical)))
        if self.since is not None:
            object.__setattr__(self, "since", to_utc(self.since))
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, not {self.limit}")
        if self.cause is not None and not _CAUSE_WORDS.fullmatch(self.cause):
            raise ValueError(
                f"cause {self.cause!r}: expected a cause name or a word of one "
                "(lower case, digits, underscores: oom, cuda_oom)"
            )
        if self.query is not None:
            try:
                object.__setattr__(self, "_compiled", jmespath.compile(self.query))
            except JMESPathError as exc:
                raise ValueError(f"bad JMESPath query: {exc}") from None

    @property
    def needs_python(self) -> bool:
        """Whether some rows the SQL returns may still be dropped (so SQL LIMIT is unsafe)."""
        glob = self.experiment is not None and not _GLOB_CHARS.isdisjoint(self.experiment)
        return glob or bool(self.tags or self.properties or self._compiled is not None)

    def matches(self, record: dict[str, Any]) -> bool:
        """The checks SQL cannot make portably, on a `run_record` dict."""
        if self.experiment is not None and not fnmatchcase(
            record["experimentName"] or "", self.experiment
        ):
            return False
        tags, props = record["tags"], record["properties"]
        for key, value in self.tags:
            if key not in tags or (value is not None and tags[key] != value):
                return False
        if any(props.get(key) != value for key, value in self.properties):
            return False
        if self._compiled is None:
            return True
        try:
            # The query is written over the list of runs; one run at a time keeps streaming.
            return bool(self._compiled.search([record]))
        except JMESPathError as exc:
            raise ValueError(f"JMESPath query failed: {exc}") from None


def glob_to_like(pattern: str) -> str:
    """fnmatch glob -> LIKE pattern (escape `\\`) matching a superset of the glob: a `[...]`
    class becomes `_`, and SQLite's LIKE ignores case; fnmatchcase then decides exactly."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char == "[":
            j = i + 1 if i < n and pattern[i] == "!" else i
            j = j + 1 if j < n and pattern[j] == "]" else j
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:  # a complete class: one character; an unclosed `[` is literal
                out.append("_")
                i = j + 1
            else:
                out.append("[")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else to_utc(value).isoformat().replace("+00:00", "Z")


def _time(value: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes (UTC by construction); PostgreSQL gives aware ones.
    return None if value is None else to_utc(value)


def _labels(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else to_utc(now)


def run_record(row: AnyRow | Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """A `runs` row as a JSON-able dict named like AzureML's `get_details()`, which is what
    users' JMESPath queries and scripts already expect."""
    m: Mapping[Any, Any] = row._mapping if isinstance(row, Row) else row
    start, end = _time(m["StartTime"]), _time(m["EndTime"])
    duration: float | None = None
    if start is not None and end is not None:
        duration = (end - start).total_seconds()
    elif start is not None and m["Status"] not in TERMINAL_STATUSES:
        duration = max(0.0, (_now(now) - start).total_seconds())
    return {
        "runId": m["RunId"],
        "status": m["Status"],
        "experimentName": m["ExperimentName"],
        "experimentId": m["ExperimentId"],
        "workspaceName": m["WorkspaceName"],
        "workspaceId": m["WorkspaceId"],
        "parentRunId": m["ParentRunId"],
        "rootRunId": m["RootRunId"],
        "runType": m["RunType"],
        "triggeringUserName": m["TriggeringUserName"],
        "message": m["Message"],
        "cause": m.get("cause"),  # a failed run's (consumers/model/causes.py); None otherwise
        "tags": _labels(m["Tags"]),
        "properties": _labels(m["Properties"]),
        "firstSeenUtc": _iso(m["FirstSeen"]),
        "lastSeenUtc": _iso(m["LastSeen"]),
        "startTimeUtc": _iso(start),
        "endTimeUtc": _iso(end),
        "durationSeconds": duration,
    }


def cause_family(column: Any, word: str) -> ColumnElement[bool]:
    """The cause `word`, or any cause it is a word of (words are `_`-separated): `oom` is
    cuda_oom and host_oom, `cuda` is cuda_oom and cuda_error, `cuda_oom` only itself. So a
    family needs no list in the table, and a user's `gpu_oom` joins `oom` by its name."""
    like = word.replace("_", "\\_")
    return or_(
        column == word,
        column.like(f"{like}\\_%", escape="\\"),
        column.like(f"%\\_{like}", escape="\\"),
        column.like(f"%\\_{like}\\_%", escape="\\"),
    )


def _runs_select(flt: RunFilter) -> AnySelect:
    stmt = select(runs)
    if flt.experiment is not None:
        if _GLOB_CHARS.isdisjoint(flt.experiment):
            stmt = stmt.where(runs.c.ExperimentName == flt.experiment)
        else:
            stmt = stmt.where(runs.c.ExperimentName.like(glob_to_like(flt.experiment), escape="\\"))
    if flt.statuses:
        stmt = stmt.where(runs.c.Status.in_(flt.statuses))
    if flt.since is not None:
        stmt = stmt.where(runs.c.LastSeen >= flt.since)
    if flt.cause is not None:
        stmt = stmt.where(cause_family(runs.c.cause, flt.cause))
    stmt = stmt.order_by(runs.c.LastSeen.desc(), runs.c.RunId)
    return stmt if flt.needs_python else stmt.limit(flt.limit)


def list_runs(store: Store, flt: RunFilter, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Runs matching `flt`, most recently active first."""
    now = _now(now)
    found: list[dict[str, Any]] = []
    with store.engine.connect() as conn:
        result = conn.execution_options(yield_per=_STREAM_ROWS).execute(_runs_select(flt))
        for row in result:
            record = run_record(row, now=now)
            if flt.matches(record):
                found.append(record)
                if len(found) >= flt.limit:
                    break
        result.close()
    return found


def count_runs(store: Store, flt: RunFilter, *, now: datetime | None = None) -> int:
    """How many runs match `flt`, the limit aside: what `runs list` says when it cuts the
    table. One COUNT when SQL decides every filter; otherwise the matching runs counted as
    they stream by (the checks SQL cannot make)."""
    stmt = _runs_select(flt).limit(None).order_by(None)
    with store.engine.connect() as conn:
        if not flt.needs_python:
            return int(conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())
        now = _now(now)
        result = conn.execution_options(yield_per=_STREAM_ROWS).execute(stmt)
        try:
            return sum(1 for row in result if flt.matches(run_record(row, now=now)))
        finally:
            result.close()


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One stretch of a run's life. `seconds_in_state` runs to the next status change; for
    the last entry it is None once terminal, else the time spent in it so far."""

    status: str
    time: datetime
    seconds_in_state: float | None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class RunDetail:
    run: dict[str, Any]
    timeline: tuple[TimelineEntry, ...]
    children: tuple[dict[str, Any], ...]


def _timeline(rows: list[AnyRow], now: datetime) -> tuple[TimelineEntry, ...]:
    # Consecutive events with one status (re-sent with a new time) are one stretch.
    merged = [r for i, r in enumerate(rows) if i == 0 or rows[i - 1].Status != r.Status]
    entries = []
    for row, following in zip(merged, [*merged[1:], None], strict=True):
        time = to_utc(row.TimeGenerated)
        if following is not None:
            seconds: float | None = (to_utc(following.TimeGenerated) - time).total_seconds()
        elif row.Status in TERMINAL_STATUSES:
            seconds = None
        else:
            seconds = max(0.0, (now - time).total_seconds())
        entries.append(TimelineEntry(row.Status, time, seconds, row.Message))
    return tuple(entries)


def get_run(store: Store, run_id: str, *, now: datetime | None = None) -> RunDetail | None:
    """One run, its status timeline and its direct children; None if the run is unknown.

    The timeline is ordered by event time, then lifecycle rank, never by arrival, so it is
    right even when the events reached the store out of order."""
    return get_runs(store, [run_id], now=now)[run_id]


def get_runs(
    store: Store, run_ids: Sequence[str], *, now: datetime | None = None
) -> dict[str, RunDetail | None]:
    """Several runs as `get_run` reads each (None for an unknown one), in three queries for
    all of them rather than three each: the dispatcher reads a claimed batch's runs at once
    (a burst of failures is a batch of runs)."""
    now = _now(now)
    wanted = list(dict.fromkeys(run_ids))
    found: dict[str, RunDetail | None] = dict.fromkeys(wanted)
    if not wanted:
        return found
    rank = case(STATUS_RANK, value=events.c.Status, else_=len(STATUS_RANK))
    with store.engine.connect() as conn:
        rows = {r.RunId: r for r in conn.execute(select(runs).where(runs.c.RunId.in_(wanted)))}
        if not rows:
            return found
        history = conn.execute(
            select(events.c.RunId, events.c.Status, events.c.TimeGenerated, events.c.Message)
            # bounded by the runs' first and last sightings: on a partitioned events table only
            # the partitions of their lifetimes are read (checked with EXPLAIN in tests)
            .where(
                events.c.RunId.in_(list(rows)),
                events.c.TimeGenerated.between(
                    min(r.FirstSeen for r in rows.values()),
                    max(r.LastSeen for r in rows.values()),
                ),
            )
            .order_by(events.c.RunId, events.c.TimeGenerated, rank, events.c.id)
        ).all()
        kids = conn.execute(
            select(runs)
            .where(runs.c.ParentRunId.in_(list(rows)))
            .order_by(runs.c.FirstSeen, runs.c.RunId)
        ).all()
    timelines: dict[str, list[AnyRow]] = {run_id: [] for run_id in rows}
    for event in history:
        row = rows[event.RunId]
        if row.FirstSeen <= event.TimeGenerated <= row.LastSeen:  # the run's own bounds
            timelines[event.RunId].append(event)
    children: dict[str, list[AnyRow]] = {run_id: [] for run_id in rows}
    for kid in kids:
        children[kid.ParentRunId].append(kid)
    for run_id, row in rows.items():
        found[run_id] = RunDetail(
            run=run_record(row, now=now),
            timeline=_timeline(timelines[run_id], now),
            children=tuple(run_record(kid, now=now) for kid in children[run_id]),
        )
    return found


def _preview(value: bytes | None) -> str | None:
    if value is None:
        return None
    return bytes(value).decode("utf-8", errors="backslashreplace")[:_PREVIEW_CHARS]


_LETTER_FIELDS = {
    "id": "id",
    "receivedAtUtc": "ReceivedAt",
    "reason": "Reason",
    "error": "Error",
    "sourceTopic": "SourceTopic",
    "sourcePartition": "SourcePartition",
    "sourceOffset": "SourceOffset",
    "payloadBytes": "PayloadBytes",
}


def count_dead_letters(store: Store, *, reason: str | None = None) -> int:
    """How many dead letters there are (of `reason`), for a table cut by --limit."""
    stmt = select(func.count()).select_from(dead_letters)
    if reason is not None:
        stmt = stmt.where(dead_letters.c.Reason == reason)
    with store.engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def list_dead_letters(
    store: Store, *, limit: int = 100, reason: str | None = None
) -> list[dict[str, Any]]:
    """Newest dead letters first, with a text preview instead of the (possibly huge) payload:
    only its first bytes leave the database."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    d = dead_letters.c
    stmt = select(
        *(d[name] for name in _LETTER_FIELDS.values()),
        func.substr(d.Payload, 1, _PREVIEW_BYTES, type_=LargeBinary).label("PayloadHead"),
        func.substr(d.MessageKey, 1, _PREVIEW_BYTES, type_=LargeBinary).label("KeyHead"),
    )
    if reason is not None:
        stmt = stmt.where(d.Reason == reason)
    stmt = stmt.order_by(d.ReceivedAt.desc(), d.id.desc()).limit(limit)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        {key: getattr(row, name) for key, name in _LETTER_FIELDS.items()}
        | {
            "receivedAtUtc": _iso(row.ReceivedAt),
            "payloadPreview": _preview(row.PayloadHead),
            "key": _preview(row.KeyHead),
        }
        for row in rows
    ]
