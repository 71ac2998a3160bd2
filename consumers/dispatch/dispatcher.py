"""The dispatcher: claims due notifications from the outbox, renders, sends, marks.

It runs an asyncio loop in its own thread and wires the dispatch stages to it: the claim
loop (consumers.dispatch.claims) fills a queue that `notify.concurrency` workers drain, each
delivering one notification at a time (consumers.dispatch.delivery). Ingest wakes it right
after the store commit that wrote new notifications (no polling delay on the hot path);
otherwise it sleeps until the next retry is due, at most a second.

Each notification is marked sent immediately after the receiver accepted it
(consumers.dispatch.marks). The only duplicate possible is a process dying in that gap
(after the SMTP server or webhook endpoint accepted, before the mark): the lease then
expires and another attempt sends it again. Webhooks carry the notification id as
Idempotency-Key, and emails a stable Message-ID, so receivers can drop that duplicate too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import aiohttp

from consumers.config.settings import Settings
from consumers.dispatch.claims import ClaimLoop
from consumers.dispatch.delivery import Delivery
from consumers.dispatch.marks import MarkStage
from consumers.dispatch.runs import RunCache
from consumers.dispatch.send import Senders
from consumers.model.notifications import Notification
from consumers.noise.policy import NoisePolicy
from consumers.notify.templating import Renderer
from consumers.store import Store
from consumers.store.listen import OutboxListener
from consumers.store.outbox import Outbox
from consumers.store.sent_marks import sent_marks
from consumers.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 30.0  # sends in flight at a stop finish within this (receivers' timeouts)


def _now() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        *,
        renderer: Renderer | None = None,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._notify = settings.notify
        outbox = Outbox(store)
        self._queue: asyncio.Queue[Notification] | None = None  # claimed, not yet taken
        self._marks = MarkStage(sent_marks(store, outbox), clock, self._backlog)
        runs = RunCache(store, clock)
        self._senders = Senders(settings, renderer or Renderer.for_settings(settings))
        self._claims = ClaimLoop(
            outbox, settings.notify, metrics, marks=self._marks, runs=runs, clock=clock
        )
        self._delivery = Delivery(
            store,
            outbox,
            settings,
            metrics,
            senders=self._senders,
            marks=self._marks,
            runs=runs,
            noise=NoisePolicy(settings.noise, metrics.suppressed),
            clock=clock,
            rng=rng or random.Random(),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # -- waking ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Called from the ingest thread after a commit that wrote notifications."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                loop.call_soon_threadsafe(event.set)

    def start(self, stop: threading.Event) -> threading.Thread:
        if self._store.engine.dialect.name == "postgresql":
            # notifications written by other replicas wake this one too
            OutboxListener(self._store.engine, self.wake).start(stop)
        thread = threading.Thread(
            target=lambda: asyncio.run(self.run(stop)), name="dispatcher", daemon=True
        )
        thread.start()
        return thread

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_default_executor(
            ThreadPoolExecutor(self._notify.concurrency + 4, thread_name_prefix="dispatch-db")
        )
        wake = self._wake = asyncio.Event()
        self._marks.open()
        queue: asyncio.Queue[Notification] = asyncio.Queue()
        self._queue = queue
        async with aiohttp.ClientSession() as session:
            self._senders.open(session)
            workers = [
                asyncio.create_task(self._worker(queue, wake))
                for _ in range(self._notify.concurrency)
            ]
            try:
                await self._claims.run(queue, wake, stop)
            finally:
                await self._shutdown(queue, workers)
                await self._senders.close()
                await self._marks.close()
        self._loop = None

    async def _shutdown(
        self, queue: asyncio.Queue[Notification], workers: list[asyncio.Task[None]]
    ) -> None:
        """Claimed but unsent notifications go back to pending now rather than when their
        lease expires; the ones being sent finish (bounded by the receivers' timeouts)."""
        await self._claims.release(queue)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.join(), SHUTDOWN_WAIT_S)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, queue: asyncio.Queue[Notification], wake: asyncio.Event) -> None:
        low_water = self._notify.concurrency * 2  # the claim loop's queue holds up to 4x
        while True:
            notification = await queue.get()
            if queue.qsize() < low_water:
                wake.set()  # claim more before the workers run dry
            try:
                if self._claims.expiring(notification):
                    log.info(
                        "notification %s waited past its lease in the queue; left for"
                        " another claim",
                        notification.id,
                    )
                    continue
                await self._delivery.deliver(notification)
            except Exception:  # a bug must not kill the worker; the lease brings it back
                log.exception("delivering notification %s failed", notification.id)
            finally:
                queue.task_done()

    def _backlog(self) -> bool:
        """Claimed notifications are waiting for a worker: sends, not marks, are the
        bottleneck, and a commit per turn of the loop would slow them down."""
        return self._queue is not None and not self._queue.empty()
