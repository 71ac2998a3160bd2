"""Reading runs back from the store for the client (read-only SQL, one code path for SQLite and
PostgreSQL). Records are `store.queries.run_record` dicts, named like the run API's
`get_details()`, plus `description`.

Imported on the first read (`Workspace.reads`), so a script that only publishes never loads
SQLAlchemy or a database driver.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from consumers.client.ledger import Progress
from consumers.model.errors import StoreError
from consumers.model.events import Status, to_utc
from consumers.store.engine import Store
from consumers.store.queries import AnyRow, run_record
from consumers.store.schema import events, runs

_CHUNK = 500  # run ids per IN list: far below SQLite's and PostgreSQL's bound-parameter limits


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run's state row, with the times that say how far the store has got with it."""

    record: dict[str, Any]
    status_time: datetime
    updated_time: datetime | None


def _stored(row: AnyRow) -> StoredRun:
    record = run_record(row)
    record["description"] = row.Description
    updated = None if row.UpdatedTime is None else to_utc(row.UpdatedTime)
    return StoredRun(record, to_utc(row.StatusTime), updated)


class StoreReads:
    """Every query the client makes. A database error is a StoreError naming the store (a
    store without runwatch's tables fails here: the client does not check the schema version,
    which needs Alembic and only matters to writers)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _rows(self, stmt: Any) -> list[AnyRow]:
        try:
            with self.store.engine.connect() as conn:
                return list(conn.execute(stmt))
        except SQLAlchemyError as exc:
            raise StoreError(
                f"reading runs from {self.store.url} failed ({exc.__class__.__name__}: {exc}); "
                "is it a runwatch store (`runwatch db upgrade`)?",
                retriable=isinstance(exc, OperationalError | InterfaceError),  # down, locked
            ) from exc

    def progress(self, run_ids: Collection[str]) -> dict[str, Progress]:
        """StatusTime and UpdatedTime of the runs the store has (missing ids are absent)."""
        ids = list(run_ids)
        found: dict[str, Progress] = {}
        columns = (runs.c.RunId, runs.c.StatusTime, runs.c.UpdatedTime)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            for row in self._rows(select(*columns).where(runs.c.RunId.in_(chunk))):
                updated = None if row.UpdatedTime is None else to_utc(row.UpdatedTime)
                found[row.RunId] = Progress(to_utc(row.StatusTime), updated)
        return found

    def load(self, run_id: str) -> StoredRun | None:
        rows = self._rows(select(runs).where(runs.c.RunId == run_id))
        return _stored(rows[0]) if rows else None

    def error_code(self, run_id: str) -> str | None:
        """The code `fail(error_code=...)` gave, kept on the Failed event (ResultSignature)."""
        stmt = (
            select(events.c.ResultSignature)
            .where(events.c.RunId == run_id, events.c.Status == Status.Failed.value)
            .order_by(events.c.TimeGenerated.desc())
            .limit(1)
        )
        rows = self._rows(stmt)
        code: str | None = rows[0].ResultSignature if rows else None
        return code

    def children(self, parent_ids: Iterable[str]) -> list[StoredRun]:
        ids = list(parent_ids)
        found: list[StoredRun] = []
        for start in range(0, len(ids), _CHUNK):
            stmt = (
                select(runs)
                .where(runs.c.ParentRunId.in_(ids[start : start + _CHUNK]))
                .order_by(runs.c.FirstSeen, runs.c.RunId)
            )
            found.extend(_stored(row) for row in self._rows(stmt))
        return found

    def descendants(self, run_id: str) -> list[StoredRun]:
        """Children, grandchildren, ... level by level (a tree of any depth, no recursive SQL)."""
        found: list[StoredRun] = []
        level = [run_id]
        seen = {run_id}
        while level:
            kids = [kid for kid in self.children(level) if kid.record["runId"] not in seen]
            found.extend(kids)
            level = [kid.record["runId"] for kid in kids]
            seen.update(level)
        return found

    def experiment_runs(
        self,
        workspace: str,
        experiment: str,
        *,
        statuses: tuple[str, ...] = (),
        include_children: bool = False,
    ) -> list[StoredRun]:
        """An experiment's runs, newest first (by first seen, i.e. creation)."""
        stmt = select(runs).where(
            runs.c.ExperimentName == experiment, runs.c.WorkspaceName == workspace
        )
        if statuses:
            stmt = stmt.where(runs.c.Status.in_(statuses))
        if not include_children:
            stmt = stmt.where(runs.c.ParentRunId.is_(None))
        stmt = stmt.order_by(runs.c.FirstSeen.desc(), runs.c.RunId)
        return [_stored(row) for row in self._rows(stmt)]
