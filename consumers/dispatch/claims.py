"""The claim loop: due notifications out of the outbox into the workers' queue.

It keeps the queue at most four times the workers deep, and is woken to claim more when it
falls below twice: claims of 2-4 rounds of sends, each one transaction and one read of the
runs (at most twice as deep, claims were a third of a burst's store time and the workers
ran dry while one was made). Deeper would only lease rows nobody sends yet: a claimed row
waits at most 4 sends of a worker (4 x the receivers' 10 s timeout, within the 60 s lease).
It reads the claimed runs in one thread hop (consumers.dispatch.runs), turns a group's rows
into one digest, and otherwise sleeps until woken (ingest's commit, another
replica's NOTIFY, workers running low) or until the next retry is due, at most a second.
Every few seconds it returns expired claims (a replica that died mid-send) and refreshes
the outbox depth gauge. A store that fails is waited for with backoff: the loop, and with
it all sending, must outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from consumers.config.receivers import NotifySettings
from consumers.dispatch.digests import bundle
from consumers.dispatch.marks import MarkStage
from consumers.dispatch.runs import RunCache
from consumers.model.errors import RunwatchError
from consumers.model.notifications import Notification
from consumers.store.outbox import Outbox
from consumers.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

IDLE_WAIT_S = 1.0
DEPTH_EVERY_S = 5.0
FAIL_START_S = 0.2  # a failing claim loop backs off from this ...
FAIL_MAX_S = 5.0  # ... to this
FAIL_LOG_EVERY_S = 30.0
# A claim with less than this share of its lease left is not sent: see ClaimLoop.expiring.
LEASE_MARGIN = 0.25


class ClaimLoop:
    def __init__(
        self,
        outbox: Outbox,
        notify: NotifySettings,
        metrics: Metrics,
        *,
        marks: MarkStage,
        runs: RunCache,
        clock: Callable[[], datetime],
    ) -> None:
        self._outbox = outbox
        self._notify = notify
        self._metrics = metrics
        self._marks = marks
        self._runs = runs
        self._clock = clock

    async def run(
        self, queue: asyncio.Queue[Notification], wake: asyncio.Event, stop: threading.Event
    ) -> None:
        """Claims until stopped, outliving a failing store (down, locked, a bug in a
        query) with backoff."""
        delay = FAIL_START_S
        last_logged = -FAIL_LOG_EVERY_S
        while not stop.is_set():
            try:
                await self._claim_until_stopped(queue, wake, stop)
                return
            except Exception as exc:
                self._metrics.store_errors.inc()
                now = time.monotonic()
                if now - last_logged >= FAIL_LOG_EVERY_S:
                    last_logged = now
                    log.error(
                        "claiming notifications failed, retrying (every %.1fs at most): %s",
                        FAIL_MAX_S,
                        exc,
                        exc_info=not (isinstance(exc, RunwatchError) and exc.retriable),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, FAIL_MAX_S)

    async def _claim_until_stopped(
        self, queue: asyncio.Queue[Notification], wake: asyncio.Event, stop: threading.Event
    ) -> None:
        await self._release_expired()
        last_depth = 0.0
        room_limit = self._notify.concurrency * 4
        while not stop.is_set():
            wake.clear()
            room = room_limit - queue.qsize()
            claimed: list[Notification] = []
            if room > 0:
                claimed = await asyncio.to_thread(
                    self._outbox.claim,
                    self._clock(),
                    min(room, self._notify.claim_batch),
                    self._notify.lease_s,
                )
                # One thread hop reads every claimed run, instead of one hop (and a wait
                # for the GIL among many pool threads) per notification.
                await asyncio.to_thread(self._runs.prefetch, [n.run_id for n in claimed])
                claimed = bundle(claimed)  # a group's rows: one digest
                for notification in claimed:
                    queue.put_nowait(notification)
            loop_time = asyncio.get_running_loop().time()
            if loop_time - last_depth >= DEPTH_EVERY_S:
                last_depth = loop_time
                # another replica may have died mid-send: its expired claims come back here
                await self._release_expired()
                await self._refresh_depth()
            if claimed:
                continue
            # A full queue: the workers wake this loop when it runs low.
            timeout = IDLE_WAIT_S if room <= 0 else await self._until_next_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def expiring(self, notification: Notification) -> bool:
        """A claim that waited in the queue until its lease is (nearly) over is left to
        expire, not sent: by then another replica may have taken the row back and be sending
        it too (seen under load with a short lease: 536 mails for 500 failures, nobody
        killed). The skipped claim counted as an attempt; the row is claimed again later."""
        until = notification.lease_until
        if until is None:
            return False
        left = (until - self._clock()).total_seconds()
        return left < self._notify.lease_s * LEASE_MARGIN

    async def _release_expired(self) -> None:
        """Journaled marks first: a send that was accepted is never taken for a lost one."""
        await self._marks.apply()
        await asyncio.to_thread(self._outbox.release_expired, self._clock())

    async def _until_next_due(self) -> float:
        due = await asyncio.to_thread(self._outbox.next_due)
        if due is None:
            return IDLE_WAIT_S
        return min(max((due - self._clock()).total_seconds(), 0.0), IDLE_WAIT_S)

    async def _refresh_depth(self) -> None:
        depth = await asyncio.to_thread(self._outbox.depth)
        for state, count in depth.items():
            self._metrics.outbox.labels(state=state).set(count)

    async def release(self, queue: asyncio.Queue[Notification]) -> None:
        """At shutdown: claimed but unsent notifications go back to pending now rather than
        when their lease expires."""
        now = self._clock()
        while not queue.empty():
            notification = queue.get_nowait()
            queue.task_done()
            await asyncio.to_thread(
                self._outbox.mark_retry, notification.id, now, "shutdown", "released at shutdown"
            )
