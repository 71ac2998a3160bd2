"""The console's reads: SQLAlchemy Core on indexed columns, each bounded by a LIMIT, so a
page costs the same with a thousand events stored as with a million.

- failures: events by (Status, TimeGenerated) (ix_events_status_time), newest first; the
  message read as its head and tail only (what the classifier looks at), never whole;
- a run: consumers.store.queries.get_run (runs by key, events by the natural key's RunId);
- notifications: by (created_at), (state, created_at) or (run_id, created_at).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_

from consumers.model.causes import Cause, CauseTable
from consumers.model.events import Status, to_utc
from consumers.model.notifications import Notification, NotificationState
from consumers.store.engine import Store
from consumers.store.schema import events
from consumers.store.schema import notifications as n
from consumers.webconsole.causes import FAILURE_COLUMNS, FailureCauses


@dataclass(frozen=True, slots=True)
class Failure:
    run_id: str
    experiment: str
    workspace: str | None
    time: datetime
    summary: str  # the message's first line, cut
    cause: Cause


@dataclass(frozen=True, slots=True)
class ExperimentFailures:
    experiment: str
    failures: tuple[Failure, ...]  # newest first


@dataclass(frozen=True, slots=True)
class CauseGroup:
    cause: str
    description: str | None
    count: int
    experiments: tuple[ExperimentFailures, ...]  # most failures first


def _summary(message: str | None) -> str:
    for line in (message or "").splitlines():
        if line.strip():
            text = line.strip()
            return text if len(text) <= 160 else text[:159] + "…"
    return ""


def failures_query(limit: int) -> Any:
    return (
        select(
            events.c.RunId,
            events.c.ExperimentName,
            events.c.WorkspaceName,
            events.c.TimeGenerated,
            *FAILURE_COLUMNS,
        )
        .where(events.c.Status == Status.Failed.value)
        .order_by(events.c.TimeGenerated.desc())
        .limit(limit)
    )


def recent_failures(store: Store, causes: FailureCauses, limit: int) -> list[Failure]:
    """The newest `limit` failed runs (one entry per run), each with its cause."""
    query = failures_query(limit)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    seen: set[str] = set()
    out = []
    for row in rows:
        if row.RunId in seen:
            continue
        seen.add(row.RunId)
        out.append(
            Failure(
                row.RunId,
                row.ExperimentName or "(no experiment)",
                row.WorkspaceName,
                to_utc(row.TimeGenerated),
                _summary(row.message_head),
                causes.of(row),
            )
        )
    return out


def group_failures(failures: Sequence[Failure], table: CauseTable) -> list[CauseGroup]:
    """By cause (most failures first), then by experiment (most failures first)."""
    by_cause: dict[str, dict[str, list[Failure]]] = {}
    for failure in failures:
        by_cause.setdefault(failure.cause.name, {}).setdefault(failure.experiment, []).append(
            failure
        )
    groups = []
    for cause, experiments in by_cause.items():
        ordered = sorted(experiments.items(), key=lambda item: (-len(item[1]), item[0]))
        groups.append(
            CauseGroup(
                cause,
                table.describe(cause),
                sum(len(f) for f in experiments.values()),
                tuple(ExperimentFailures(name, tuple(f)) for name, f in ordered),
            )
        )
    groups.sort(key=lambda g: (-g.count, g.cause))
    return groups


def run_events_query(run_id: str) -> Any:
    """A run's events by RunId alone, newest first (the natural key's index). With Status in
    the WHERE clause SQLite preferred the (Status, TimeGenerated) index and walked every
    failure stored since this run's: 840 ms at p99 with 1M events."""
    return (
        select(events.c.RunId, events.c.TimeGenerated, events.c.Status, *FAILURE_COLUMNS)
        .where(events.c.RunId == run_id)
        .order_by(events.c.TimeGenerated.desc())
    )


def run_failure(store: Store, causes: FailureCauses, run_id: str) -> Cause | None:
    """The cause of a run's latest failure, None if it never failed."""
    with store.engine.connect() as conn:
        for row in conn.execute(run_events_query(run_id)):
            if row.Status == Status.Failed.value:
                return causes.of(row)
    return None


def notifications_query(
    *,
    state: NotificationState | None = None,
    run_id: str | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 100,
) -> Any:
    """Newest first, ties by id; `before` is the (created_at, id) of the last row of the
    previous page. Every index it reads ends in (created_at, id), so no sort is needed."""
    query = select(n).order_by(n.c.created_at.desc(), n.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(n.c.state == state.value)
    if run_id is not None:
        query = query.where(n.c.run_id == run_id)
    if before is not None:
        at, last = before  # a row-value comparison: one index range on both engines
        query = query.where(n.c.created_at <= at, tuple_(n.c.created_at, n.c.id) < (at, last))
    return query


def notifications(
    store: Store,
    *,
    state: NotificationState | None = None,
    run_id: str | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 100,
) -> list[Notification]:
    """Newest first; `before` pages on (notifications_query)."""
    query = notifications_query(state=state, run_id=run_id, before=before, limit=limit)
    with store.engine.connect() as conn:
        return [Notification.from_row(row) for row in conn.execute(query)]


def notification(store: Store, notification_id: str) -> Notification | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(n).where(n.c.id == notification_id)).first()
    return None if row is None else Notification.from_row(row)


def state_counts(store: Store) -> dict[str, int]:
    """How many notifications are in each state (ix_notifications_state_created covers it)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(n.c.state, func.count()).group_by(n.c.state)).all()
    return {state: int(count) for state, count in rows}
