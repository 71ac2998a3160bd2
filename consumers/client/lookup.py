"""Reading runs back from the store for the lifecycle API (read-only, one code path for
SQLite and PostgreSQL). Records are `store.queries.run_record` dicts, named like the run
API's `get_details()`, plus `description`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select

from consumers.errors import RunwatchError
from consumers.events import Status, parse_status, to_utc
from consumers.store import Store
from consumers.store.queries import AnyRow, run_record
from consumers.store.schema import events, runs

if TYPE_CHECKING:
    from consumers.client.workspace import Workspace

T = TypeVar("T")
# Tags/properties filters as the run API takes them: "key" (has it), ["k1", "k2"] (has
# all), or {"key": "value"} ({"key": None} for "has it, whatever the value").
LabelFilter = str | Iterable[str] | Mapping[str, str | None] | None


def wait_until(
    ws: Workspace,
    read: Callable[[], T],
    ready: Callable[[T], bool],
    lagging: Callable[[T], RunwatchError],
) -> T:
    """Poll the store until `ready`, for at most the workspace's consistency_timeout."""
    deadline = time.monotonic() + ws.consistency_timeout
    while True:
        value = read()
        if ready(value):
            return value
        if time.monotonic() >= deadline:
            raise lagging(value)
        time.sleep(ws.poll_interval)


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run's state row, with the times that say how far the store has caught up."""

    record: dict[str, Any]
    status_time: datetime
    updated_time: datetime | None


def _stored(row: AnyRow) -> StoredRun:
    record = run_record(row)
    record["description"] = row.Description
    updated = None if row.UpdatedTime is None else to_utc(row.UpdatedTime)
    return StoredRun(record, to_utc(row.StatusTime), updated)


def load(store: Store, run_id: str) -> StoredRun | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.RunId == run_id)).first()
    return None if row is None else _stored(row)


def error_code(store: Store, run_id: str) -> str | None:
    """The code `fail(error_code=...)` gave, kept on the Failed event (ResultSignature)."""
    stmt = (
        select(events.c.ResultSignature)
        .where(events.c.RunId == run_id, events.c.Status == Status.Failed.value)
        .order_by(events.c.TimeGenerated.desc())
        .limit(1)
    )
    with store.engine.connect() as conn:
        code: str | None = conn.execute(stmt).scalar()
    return code


def children(store: Store, parent_ids: Iterable[str]) -> list[StoredRun]:
    ids = list(parent_ids)
    if not ids:
        return []
    stmt = select(runs).where(runs.c.ParentRunId.in_(ids)).order_by(runs.c.FirstSeen, runs.c.RunId)
    with store.engine.connect() as conn:
        return [_stored(row) for row in conn.execute(stmt)]


def descendants(store: Store, run_id: str) -> list[StoredRun]:
    """Children, grandchildren, ... level by level (a tree of any depth, no recursive SQL)."""
    found: list[StoredRun] = []
    level = [run_id]
    seen = {run_id}
    while level:
        kids = [kid for kid in children(store, level) if kid.record["runId"] not in seen]
        found.extend(kids)
        level = [kid.record["runId"] for kid in kids]
        seen.update(level)
    return found


def experiment_runs(
    store: Store,
    workspace: str,
    experiment: str,
    *,
    statuses: Iterable[str] = (),
    include_children: bool = False,
) -> list[StoredRun]:
    """An experiment's runs, newest first (by first seen, i.e. creation)."""
    stmt = select(runs).where(
        runs.c.ExperimentName == experiment, runs.c.WorkspaceName == workspace
    )
    wanted = status_names(statuses)
    if wanted:
        stmt = stmt.where(runs.c.Status.in_(wanted))
    if not include_children:
        stmt = stmt.where(runs.c.ParentRunId.is_(None))
    stmt = stmt.order_by(runs.c.FirstSeen.desc(), runs.c.RunId)
    with store.engine.connect() as conn:
        return [_stored(row) for row in conn.execute(stmt)]


def status_names(statuses: str | Iterable[str] | None) -> tuple[str, ...]:
    """ "Failed", ["Failed", "Canceled"] or None -> canonical names; a typo is a ValueError."""
    if statuses is None:
        return ()
    items = [statuses] if isinstance(statuses, str) else list(statuses)
    return tuple(dict.fromkeys(parse_status(s) for s in items))


def _label_pairs(wanted: LabelFilter) -> list[tuple[str, str | None]]:
    if wanted is None:
        return []
    if isinstance(wanted, str):
        return [(wanted, None)]
    if isinstance(wanted, Mapping):
        return [(str(k), None if v is None else str(v)) for k, v in wanted.items()]
    return [(str(k), None) for k in wanted]


def matches(
    record: Mapping[str, Any],
    *,
    tags: LabelFilter = None,
    properties: LabelFilter = None,
    statuses: tuple[str, ...] = (),
) -> bool:
    if statuses and record["status"] not in statuses:
        return False
    for labels, wanted in ((record["tags"], tags), (record["properties"], properties)):
        for key, value in _label_pairs(wanted):
            if key not in labels or (value is not None and labels[key] != value):
                return False
    return True
