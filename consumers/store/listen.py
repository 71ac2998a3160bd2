"""Cross-replica wake-ups on PostgreSQL: the ingest transaction that writes notifications
ends with NOTIFY (delivered at commit), and every replica's dispatcher LISTENs, so whichever
replica is idle claims them at once instead of at its next poll. FOR UPDATE SKIP LOCKED then
decides who sends which; the wake-up is only a hint, and the dispatcher's poll (at most a
second) still runs if a NOTIFY is missed during a reconnect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

CHANNEL = "runwatch_outbox"
# Runs whose status changed: the payload is their ids, one per line, or empty when they do
# not fit (NOTIFY takes under 8000 bytes): then every waiter looks (Run.wait_for_completion).
RUNS_CHANNEL = "runwatch_runs"
_PAYLOAD_MAX = 7900
_RECONNECT_S = 1.0


def notify_outbox(conn: Connection) -> None:
    """In the writing transaction: PostgreSQL delivers it only if that commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"NOTIFY {CHANNEL}"))


def notify_runs(conn: Connection, run_ids: Iterable[str]) -> None:
    """In the writing transaction, for the runs whose status events it stores."""
    if conn.dialect.name != "postgresql":
        return
    payload = "\n".join(sorted(set(run_ids)))
    if len(payload.encode()) > _PAYLOAD_MAX:
        payload = ""
    conn.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": RUNS_CHANNEL, "payload": payload}
    )


def libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class OutboxListener:
    """LISTEN on its own autocommit connection, in its own thread; calls `on_notify` for
    every batch of NOTIFYs received."""

    def __init__(self, engine: Engine, on_notify: Callable[[], None]) -> None:
        self._url = libpq_url(engine)
        self._on_notify = on_notify
        self.connected = threading.Event()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(stop,), name="outbox-listener", daemon=True
        )
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        import psycopg  # PostgreSQL only: a SQLite service never loads it

        while not stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    while not stop.is_set():
                        # a short timeout bounds how long a stop waits for this thread
                        if any(True for _ in conn.notifies(timeout=0.5)):
                            self._on_notify()
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning("outbox listener lost its connection, reconnecting: %s", exc)
                stop.wait(_RECONNECT_S)
