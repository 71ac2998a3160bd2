"""Durable "sent" marks that never wait for the store's write lock.

A receiver's acceptance must be recorded at once: a process killed between the acceptance and
the mark sends that notification again after the lease (the documented window), so the
window's length, times the send rate, is the number of duplicates one SIGKILL causes.

On PostgreSQL a mark is one short transaction on the notifications table: rows are locked,
not the database, and nothing else holds those rows. SQLite has one writer for the whole
database, and an ingest batch holds it for tens to hundreds of milliseconds under backlog
(measured: 75 ms on average for batches over 10 ms, up to 0.9 s, at 2,000 events/s). Marks
written there waited behind it while more sends were accepted, and one SIGKILL re-sent up to
16 mails. So on SQLite a mark goes first to a journal of its own, a small SQLite file beside
the store (`<database>-sent`, written by marks only), which commits in well under a
millisecond and waits for nothing else, so the dispatcher makes it on its event loop, with no
thread hop (`journaled`). The journal is folded into the notifications table right after
(`apply`, on another thread), at start-up, and always before expired leases are released, so
a journaled mark is never taken for a lost send.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from consumers.model.events import to_utc
from consumers.store.engine import Store
from consumers.store.outbox import Outbox

_SCHEMA = "CREATE TABLE IF NOT EXISTS sent (id TEXT PRIMARY KEY, sent_at TEXT NOT NULL)"


class SentMarks(Protocol):
    # True: `record` writes the local journal (cheap, waits for nothing: fine on an event
    # loop) and `apply` must fold it into the outbox; False: `record` is the outbox update.
    journaled: bool

    def record(self, notification_ids: Sequence[str], now: datetime) -> None:
        """Durable when it returns (a process crash cannot lose it)."""

    def apply(self) -> int:
        """Recorded marks into the notifications table; how many were folded in."""

    def close(self) -> None: ...


class DirectMarks:
    """PostgreSQL (and an in-memory SQLite): the mark is the notifications row itself."""

    journaled = False

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def record(self, notification_ids: Sequence[str], now: datetime) -> None:
        self._outbox.mark_all_sent(notification_ids, now)

    def apply(self) -> int:
        return 0

    def close(self) -> None:
        pass


def journal_path(store: Store) -> Path | None:
    """`<database>-sent` beside a SQLite file store; None where marks go straight in."""
    url = store.engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(f"{url.database}-sent").expanduser()


class SentJournal:
    """The SQLite side file. `record` runs on one thread (the dispatcher's event loop),
    `apply` on others: each has its own connection, and they take turns on the file with an
    in-process lock (SQLite's own busy handler would sleep a millisecond or more)."""

    journaled = True

    def __init__(self, path: Path, outbox: Outbox) -> None:
        self.path = path
        self._outbox = outbox
        self._record_conn: sqlite3.Connection | None = None
        self._apply_conn: sqlite3.Connection | None = None
        self._apply_lock = threading.Lock()
        self._file_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode; transactions are explicit. WAL + NORMAL, as the store: a commit
        # is in the file's WAL when it returns and survives a process crash.
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_SCHEMA)
        return conn

    def record(self, notification_ids: Sequence[str], now: datetime) -> None:
        if self._record_conn is None:
            self._record_conn = self._connect()
        conn = self._record_conn
        at = to_utc(now).isoformat()
        with self._file_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO sent (id, sent_at) VALUES (?, ?)",
                    [(notification_id, at) for notification_id in notification_ids],
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def apply(self) -> int:
        """Journal -> notifications (its own transaction), then the journal entries are
        dropped. A crash between the two applies them again: marking sent is idempotent."""
        with self._apply_lock:
            if self._apply_conn is None:
                if not self.path.exists():
                    return 0
                self._apply_conn = self._connect()
            conn = self._apply_conn
            rows = conn.execute("SELECT id, sent_at FROM sent").fetchall()
            if not rows:
                return 0
            self._outbox.mark_sent_at([(i, datetime.fromisoformat(at)) for i, at in rows])
            with self._file_lock:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("DELETE FROM sent WHERE id = ?", [(i,) for i, _ in rows])
                conn.execute("COMMIT")
            return len(rows)

    def pending(self) -> int:
        """Marks recorded and not yet applied."""
        if not self.path.exists():
            return 0
        with sqlite3.connect(self.path, timeout=30) as conn:
            conn.execute(_SCHEMA)
            return int(conn.execute("SELECT count(*) FROM sent").fetchone()[0])

    def close(self) -> None:
        for conn in (self._record_conn, self._apply_conn):
            if conn is not None:
                conn.close()
        self._record_conn = self._apply_conn = None


def sent_marks(store: Store, outbox: Outbox) -> SentMarks:
    path = journal_path(store)
    return DirectMarks(outbox) if path is None else SentJournal(path, outbox)
