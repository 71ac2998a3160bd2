"""The run cache: one read of a run for all the notifications of an alert.

An alert's email and webhooks are sent together and show the same run; reading it once for
all of them, and a claimed batch's runs in one read (three queries for the batch, not three
per run: in a burst of failures every notification is a run of its own), keeps the store out
of the send path. Entries live a second, so no notification shows a stale timeline. Thread-safe: the
claim loop prefetches on a worker thread while deliveries read on others and on the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from consumers.store import Store
from consumers.store.queries import RunDetail, get_run, get_runs

log = logging.getLogger(__name__)

TTL_S = 1.0
SIZE = 4096  # past this, expired entries are dropped at the next read


class RunCache:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        *,
        ttl_s: float = TTL_S,
        size: int = SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_s
        self._size = size
        self._monotonic = monotonic
        self._runs: dict[str, tuple[float, RunDetail | None]] = {}  # run id -> (when, detail)
        self._lock = threading.Lock()

    def lookup(self, run_id: str) -> tuple[bool, RunDetail | None]:
        """(True, detail) when a fresh read is cached, (False, None) when the store must be
        read: without I/O, so the loop can ask."""
        with self._lock:
            cached = self._runs.get(run_id)
        if cached is not None and self._monotonic() - cached[0] < self._ttl:
            return True, cached[1]
        return False, None

    def get(self, run_id: str) -> RunDetail | None:
        """The run now: from the cache if read within the TTL, else from the store."""
        hit, detail = self.lookup(run_id)
        if hit:
            return detail
        now = self._monotonic()
        detail = get_run(self._store, run_id, now=self._clock())
        self._keep(now, {run_id: detail})
        return detail

    def _keep(self, now: float, details: dict[str, RunDetail | None]) -> None:
        with self._lock:
            if len(self._runs) > self._size:
                self._runs = {k: v for k, v in self._runs.items() if now - v[0] < self._ttl}
            self._runs.update((run_id, (now, detail)) for run_id, detail in details.items())

    def prefetch(self, run_ids: Iterable[str]) -> None:
        """A warm-up for a claimed batch: when a read fails, each delivery reads again and
        records its own failure."""
        missing = [run_id for run_id in dict.fromkeys(run_ids) if not self.lookup(run_id)[0]]
        if not missing:
            return
        try:
            now = self._monotonic()
            details = get_runs(self._store, missing, now=self._clock())
        except Exception as exc:
            log.warning("reading the claimed runs failed (%s: %s)", type(exc).__name__, exc)
            return
        self._keep(now, details)
