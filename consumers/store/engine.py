"""Opening the store: one SQLAlchemy engine for SQLite and PostgreSQL (migrations: `migrate`).

Importing this module costs SQLAlchemy and the table definitions only: Alembic (a quarter of
a second) is imported on the migration path, and the write path (`writer`) on the first
write, so a reader such as the client library (`open_reader`) loads neither. A
function-level import of an already imported module costs about a microsecond, once per
batch.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from consumers.model.errors import StoreError
from consumers.model.events import to_utc
from consumers.store import partitions

if TYPE_CHECKING:
    from consumers.model.events import RunStatusEvent
    from consumers.model.updates import RunUpdate
    from consumers.store.writer import DeadLetter, Recording, WriteResult


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets `runwatch runs list` read while `serve` writes; NORMAL is durable at every
    # checkpoint and survives a process crash (only an OS crash can lose the last commits).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _create_private(database: Path) -> None:
    """The database holds run data, error texts and who triggered what: created 0600 (and
    its folder 0700) before SQLite touches it. SQLite gives the -wal and -shm files it makes
    later the database file's own mode, so they are 0600 too (checked on each connection)."""
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # an existing database keeps the mode its owner gave it
    os.close(fd)


def _private_sidecars(database: Path) -> Callable[[Any, Any], None]:
    def check(_dbapi_connection: Any, _record: Any) -> None:
        for suffix in ("-wal", "-shm", "-journal"):
            sidecar = database.with_name(database.name + suffix)
            try:
                mode = stat.S_IMODE(sidecar.stat().st_mode)
                if mode & 0o077 and database.stat().st_mode & 0o077 == 0:
                    sidecar.chmod(0o600)
            except OSError:
                continue  # not there (yet), or not ours

    return check


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        database = None
        if parsed.database and parsed.database != ":memory:":
            database = Path(parsed.database).expanduser()
            _create_private(database)
        # Enough pooled connections for the dispatcher's threads: opening a new one costs
        # the PRAGMAs below each time (measured as a third of the dispatch time).
        engine = create_engine(
            parsed,
            json_serializer=_json,
            connect_args={"timeout": 30},
            pool_size=24,
            max_overflow=8,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if database is not None:
            event.listen(engine, "connect", _private_sidecars(database))
        return engine
    # psycopg 3 connections in SQLAlchemy's pool (one pool, not two): ingest writer, the
    # dispatcher's threads and retention share pool_size, with as many again on overflow.
    return create_engine(
        parsed,
        json_serializer=_json,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
    )


@dataclass(frozen=True)
class Store:
    """The handle every component shares; each method is one transaction."""

    engine: Engine
    # SQLite has one writer at a time and makes the others sleep in growing steps (up to
    # 100 ms) when they collide; taking turns on a lock in-process avoids those sleeps
    # (measured: p99 notification latency 540 ms -> see the alerting benchmark).
    # PostgreSQL locks rows, not the database: no lock there.
    write_lock: AbstractContextManager[Any] = field(default_factory=nullcontext)
    dead_letter_payload_max_bytes: int | None = None  # store.dead_letter_payload_max_bytes

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def ping(self) -> None:
        """One round trip to the database (readiness); raises StoreError when unreachable."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreError(f"store {self.url} unreachable: {exc}") from exc

    def write_batch(
        self,
        events: Sequence[RunStatusEvent],
        dead_letters: Sequence[DeadLetter] = (),
        *,
        record: Recording | None = None,
        now: datetime | None = None,
        updates: Sequence[tuple[int, RunUpdate]] = (),
    ) -> WriteResult:
        """Events, run states, dead letters and the notifications they raise, of one Kafka
        batch, in one transaction: the offsets committed after it never point past something
        not stored, and a replay finds every notification already there. `record` writes
        the notifications (the outbox's recorder, `consumers.outbox.recorder.recording`)."""
        from consumers.store import writer  # see the module docstring

        try:
            with self.write_lock, self.engine.begin() as conn:
                return writer.write_batch(
                    conn,
                    events,
                    dead_letters,
                    record=record,
                    now=now,
                    updates=updates,
                    payload_cap=self.dead_letter_payload_max_bytes,
                )
        except SQLAlchemyError as exc:
            # Down or locked: try again later. Anything else is about the data itself.
            retriable = isinstance(exc, OperationalError | InterfaceError)
            message = f"store write failed: {exc.__class__.__name__}: {exc}"
            raise StoreError(message, retriable=retriable) from exc

    def delete_older_than(self, cutoff: datetime, batch: int = 5000) -> int:
        """Retention. On PostgreSQL, whole partitions older than the cutoff are dropped first
        (a catalog change, not a delete); then, on both databases, bounded batches, each a
        short transaction so ingest never waits behind one huge delete: all old events on
        SQLite, only the default partition's on PostgreSQL (a partition straddling the
        cutoff waits until it is wholly older)."""
        from consumers.store import writer

        total = partitions.drop_older_than(self.engine, to_utc(cutoff))
        with self.engine.connect() as conn:
            events_table = partitions.default_table() if partitions.is_partitioned(conn) else None
        while True:
            with self.write_lock, self.engine.begin() as conn:
                deleted = writer.delete_batch_older_than(conn, cutoff, batch, events_table)
            total += deleted
            if deleted < batch:
                return total

    def ensure_partitions(self, now: datetime, *, interval_hours: int, ahead: int) -> list[str]:
        """Range partitions for events ahead of time (PostgreSQL; nothing on SQLite)."""
        try:
            return partitions.ensure_partitions(
                self.engine, now, interval_hours=interval_hours, ahead=ahead
            )
        except SQLAlchemyError as exc:
            raise StoreError(f"creating partitions failed: {exc}", retriable=True) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def handle(url: str, pool_size: int, dead_letter_payload_max_bytes: int | None = None) -> Store:
    engine = make_engine(url, pool_size=pool_size)
    lock = threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
    return Store(engine, lock, dead_letter_payload_max_bytes)


def open_reader(url: str, *, pool_size: int = 2) -> Store:
    """A handle for reading only (the client library): no schema check, which needs Alembic
    and protects writes; reads change nothing, and a store without runwatch's tables fails
    on the first query. Connects on first use."""
    return handle(url, pool_size)
