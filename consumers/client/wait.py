"""Waiting for a run to end: `Run.wait_for_completion` and `runwatch run wait`.

The store is asked again whenever it may have changed: on PostgreSQL when the ingest
transaction that stored a status event of the run says so (LISTEN on the channel
consumers.store.listen.RUNS_CHANNEL; a missed NOTIFY costs at most `_RECHECK_S`), on SQLite
by polling, every 50 ms at first and at most every second. A run the store does not have yet
(just submitted, or still in a spool) is waited for like a run that has not ended.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from consumers.model.errors import RunwatchError, StoreError, StoreLagError

if TYPE_CHECKING:
    from consumers.client.reads import StoredRun
    from consumers.client.workspace import Workspace

TERMINAL = ("Completed", "Failed", "Canceled")
EXIT_CODES = {"Completed": 0, "Failed": 1, "Canceled": 2}
TIMEOUT_EXIT = 124  # as timeout(1)
_RECHECK_S = 5.0
_POLL_S = (0.05, 1.0)


class RunFailedError(RunwatchError):
    """The run ended Failed; `error` is its Message, `error_code` its error code."""

    def __init__(self, run_id: str, error: str | None, error_code: str | None) -> None:
        super().__init__(f"run {run_id} Failed: {error or '(no message)'}")
        self.run_id, self.error, self.error_code = run_id, error, error_code


class WaitTimeoutError(RunwatchError):
    """The run had not ended when the wait's timeout ran out; waiting again can succeed."""

    retriable = True


class _Wakeup(Protocol):
    def wait(self, limit: float | None) -> None: ...

    def close(self) -> None: ...


class _Poll:
    def __init__(self) -> None:
        self._delay = _POLL_S[0]

    def wait(self, limit: float | None) -> None:
        time.sleep(self._delay if limit is None else min(self._delay, limit))
        self._delay = min(self._delay * 1.5, _POLL_S[1])

    def close(self) -> None:
        return None


class _Listen:
    """LISTEN before the first look, so that no change between a look and the wait is lost."""

    def __init__(self, url: str, run_id: str) -> None:
        import psycopg

        from consumers.store.listen import RUNS_CHANNEL

        self._run_id = run_id
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            self._conn.execute(f"LISTEN {RUNS_CHANNEL}")
        except psycopg.Error as exc:
            raise StoreError(f"cannot LISTEN for run {run_id}'s end: {exc}") from exc

    def wait(self, limit: float | None) -> None:
        window = _RECHECK_S if limit is None else min(limit, _RECHECK_S)
        for note in self._conn.notifies(timeout=max(window, 0.0)):
            if not note.payload or self._run_id in note.payload.split("\n"):
                return

    def close(self) -> None:
        self._conn.close()


def _wakeup(ws: Workspace, run_id: str) -> _Wakeup:
    store = ws.store
    if store.engine.dialect.name == "postgresql":
        from consumers.store.listen import libpq_url

        return _Listen(libpq_url(store.engine), run_id)
    return _Poll()


def _look(ws: Workspace, run_id: str) -> StoredRun | None:
    """The run's row, once the store shows what this process published to it; None while
    the store does not have it (or has not caught up yet)."""
    try:
        return ws.caught_up(ws.ledger.pending_run(run_id)).load(run_id)
    except StoreLagError:
        return None


def wait_until_ended(
    ws: Workspace,
    run_id: str,
    timeout: float | None = None,
    on_status: Callable[[StoredRun], None] | None = None,
) -> StoredRun:
    """The run's row once its status is terminal; WaitTimeoutError after `timeout` seconds.
    `on_status` sees each new status (the first one too)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wakeup = _wakeup(ws, run_id)
    seen: str | None = None
    try:
        while True:
            stored = _look(ws, run_id)
            if stored is not None and stored.record["status"] != seen:
                seen = stored.record["status"]
                if on_status is not None:
                    on_status(stored)
            if stored is not None and seen in TERMINAL:
                return stored
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                where = f"is {seen}" if seen else "is not in the store"
                raise WaitTimeoutError(
                    f"run {run_id} has not ended within {timeout:g}s (it {where})"
                )
            wakeup.wait(remaining)
    finally:
        wakeup.close()


def status_line(stored: StoredRun) -> str:
    record = stored.record
    line = f"run {record['runId']}: {record['status']}"
    if record["status"] == "Failed" and record.get("message"):
        line += f"\n{record['message']}"
    return line


def print_status(stored: StoredRun) -> None:
    print(status_line(stored), file=sys.stdout, flush=True)


def wait_for_completion(
    run: Any, timeout: float | None, show_output: bool, raise_on_error: bool
) -> dict[str, Any]:
    """`Run.wait_for_completion`: the run's details once it has ended."""
    from consumers.client.submit import reap

    stored = wait_until_ended(run.workspace, run.id, timeout, print_status if show_output else None)
    reap(run)
    run._status = stored.record["status"]
    details: dict[str, Any] = run.get_details()
    if raise_on_error and details["status"] == "Failed":
        error = details.get("error") or {}
        raise RunFailedError(run.id, error.get("message"), error.get("code"))
    return details
