"""The dispatcher: claims due notifications from the outbox, renders, sends, marks.

It runs an asyncio loop in its own thread. Ingest wakes it right after the store commit that
wrote new notifications (no polling delay on the hot path); otherwise it sleeps until the next
retry is due, at most a second.

Each notification is marked sent immediately after the receiver accepted it
(consumers/store/sent_marks.py): on SQLite into a journal file of its own, so the mark never
waits for an ingest transaction; without a backlog on the event loop itself (no thread hop),
otherwise, and on PostgreSQL, on a thread that does nothing else. A mark is committed within
a few milliseconds; marks that finish together, or while a commit is in progress, go in one
transaction (group commit only under backlog).
The only duplicate possible is a process dying in that gap (after the SMTP server or webhook
endpoint accepted, before the mark): the lease then expires and another attempt sends it
again. Webhooks carry the notification id as Idempotency-Key, and emails a stable Message-ID,
so receivers can drop that duplicate too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from consumers.config.receivers import ReceiverSettings
from consumers.config.settings import Settings
from consumers.model.alerts import Alert
from consumers.model.errors import RunwatchError, SendError
from consumers.model.notifications import NotificationKind
from consumers.noise import digest
from consumers.noise.policy import NoisePolicy
from consumers.notify.alertmanager import AlertmanagerSender, postable_alerts
from consumers.notify.email import EmailSender, build_message
from consumers.notify.failures import as_send_error
from consumers.notify.templating import Renderer
from consumers.notify.webhook import WebhookSender
from consumers.outbox.recheck import recheck
from consumers.store import Store
from consumers.store.digests import group_labels, stormed
from consumers.store.listen import OutboxListener
from consumers.store.outbox import Notification, Outbox
from consumers.store.outbox_state import open_state
from consumers.store.queries import RunDetail, get_run
from consumers.store.sent_marks import sent_marks
from consumers.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 1.0
_DEPTH_EVERY_S = 5.0
_RETRY_START_S = 0.2  # a failing claim loop backs off from this ...
_RETRY_MAX_S = 5.0  # ... to this
_RETRY_LOG_EVERY_S = 30.0
_MAX_FAILED_CHILDREN = 10
_RUN_CACHE_S = 1.0
_RUN_CACHE_SIZE = 4096


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
        self._outbox = Outbox(store)
        self._marks = sent_marks(store, self._outbox)
        # Marks that are not made on the loop (PostgreSQL) get a thread of their own: in the
        # shared pool they queued behind context reads and claims waiting for the store.
        self._mark_thread: ThreadPoolExecutor | None = None
        self._applier: asyncio.Task[None] | None = None
        self._apply_again = False
        self._queue: asyncio.Queue[Notification] | None = None  # claimed, not yet taken
        self._settings = settings
        self._notify = settings.notify
        self._metrics = metrics
        self._renderer = renderer or Renderer.for_settings(settings)
        self._clock = clock
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._email: EmailSender | None = None
        self._webhook: WebhookSender | None = None
        self._alertmanager: AlertmanagerSender | None = None
        self._to_mark: list[tuple[str, asyncio.Future[None]]] = []
        self._runs: dict[str, tuple[float, RunDetail | None]] = {}  # run id -> (when, detail)
        self._runs_lock = threading.Lock()
        self._marker: asyncio.Task[None] | None = None
        self._noise = NoisePolicy(settings.noise, metrics.suppressed)

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
        self._wake = asyncio.Event()
        self._mark_thread = ThreadPoolExecutor(1, thread_name_prefix="dispatch-mark")
        queue: asyncio.Queue[Notification] = asyncio.Queue()
        self._queue = queue
        async with aiohttp.ClientSession() as session:
            self._email = EmailSender(self._settings.smtp)
            self._webhook = WebhookSender(session)
            self._alertmanager = AlertmanagerSender(session)
            workers = [
                asyncio.create_task(self._worker(queue)) for _ in range(self._notify.concurrency)
            ]
            try:
                await self._claim_loop(queue, stop)
            finally:
                await self._shutdown(queue, workers)
                await self._email.close()
                self._mark_thread.shutdown(wait=True)
                if self._applier is not None:
                    await asyncio.gather(self._applier, return_exceptions=True)
                await asyncio.to_thread(self._marks.apply)  # a clean stop leaves none behind
                self._marks.close()
        self._loop = None

    async def _claim_loop(self, queue: asyncio.Queue[Notification], stop: threading.Event) -> None:
        """Claims until stopped. A store that fails (down, locked, a bug in a query) is waited
        for with backoff: the loop, and with it all sending, must outlive it."""
        delay = _RETRY_START_S
        last_logged = -_RETRY_LOG_EVERY_S
        while not stop.is_set():
            try:
                await self._claim_until_stopped(queue, stop)
                return
            except Exception as exc:
                self._metrics.store_errors.inc()
                now = time.monotonic()
                if now - last_logged >= _RETRY_LOG_EVERY_S:
                    last_logged = now
                    log.error(
                        "claiming notifications failed, retrying (every %.1fs at most): %s",
                        _RETRY_MAX_S,
                        exc,
                        exc_info=not (isinstance(exc, RunwatchError) and exc.retriable),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _claim_until_stopped(
        self, queue: asyncio.Queue[Notification], stop: threading.Event
    ) -> None:
        assert self._wake is not None
        await self._release_expired()
        last_depth = 0.0
        room_limit = self._notify.concurrency * 2
        while not stop.is_set():
            self._wake.clear()
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
                await asyncio.to_thread(self._prefetch, claimed)
                claimed = digest.bundle(claimed)  # a group's rows: one digest
                for notification in claimed:
                    queue.put_nowait(notification)
            loop_time = asyncio.get_running_loop().time()
            if loop_time - last_depth >= _DEPTH_EVERY_S:
                last_depth = loop_time
                # another replica may have died mid-send: its expired claims come back here
                await self._release_expired()
                await self._refresh_depth()
            if claimed:
                continue
            # A full queue: the workers wake this loop when it runs low (see _worker).
            timeout = _IDLE_WAIT_S if room <= 0 else await self._until_next_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _release_expired(self) -> None:
        """Journaled marks first: a send that was accepted is never taken for a lost one."""
        await asyncio.to_thread(self._marks.apply)
        await asyncio.to_thread(self._outbox.release_expired, self._clock())

    async def _until_next_due(self) -> float:
        due = await asyncio.to_thread(self._outbox.next_due)
        if due is None:
            return _IDLE_WAIT_S
        return min(max((due - self._clock()).total_seconds(), 0.0), _IDLE_WAIT_S)

    async def _refresh_depth(self) -> None:
        depth = await asyncio.to_thread(self._outbox.depth)
        for state, count in depth.items():
            self._metrics.outbox.labels(state=state).set(count)

    async def _shutdown(
        self, queue: asyncio.Queue[Notification], workers: list[asyncio.Task[None]]
    ) -> None:
        """Claimed but unsent notifications go back to pending now rather than when their
        lease expires; the ones being sent finish (bounded by the receivers' timeouts)."""
        now = self._clock()
        while not queue.empty():
            notification = queue.get_nowait()
            queue.task_done()
            await asyncio.to_thread(
                self._outbox.mark_retry, notification.id, now, "shutdown", "released at shutdown"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.join(), 30)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, queue: asyncio.Queue[Notification]) -> None:
        low_water = self._notify.concurrency
        while True:
            notification = await queue.get()
            if queue.qsize() < low_water and self._wake is not None:
                self._wake.set()  # claim more before the workers run dry
            try:
                await self.deliver(notification)
            except Exception:  # a bug must not kill the worker; the lease brings it back
                log.exception("delivering notification %s failed", notification.id)
            finally:
                queue.task_done()

    # -- one notification -----------------------------------------------------------------

    async def deliver(self, notification: Notification) -> None:
        """One notification, one boundary: whatever delivering it raises (the re-check, the
        context read, a template, building the message, the send, a bug) is recorded by
        `_failed` -- a retry with backoff, or dead with a reason -- so no row is left
        `sending` for the lease to send again and again. Marking it sent stays outside: a
        send the receiver accepted is never retried (a failed mark is the lease window)."""
        kind = notification.receiver_type
        extra = {
            "notification_id": notification.id,
            "rule": notification.rule,
            "run_id": notification.run_id,
        }
        spent = self._spent(notification)
        if spent is not None:
            await self._dead(notification, *spent)
            return
        receiver = digest.resolve_receiver(self._settings, notification.receiver)
        if receiver is None:
            await self._dead(notification, "unknown_receiver", "receiver not in the config")
            return
        try:
            if notification.members:
                rechecked = await asyncio.to_thread(self._recheck, notification)
                if rechecked is None:
                    return  # every alert of the digest was silenced or inhibited meanwhile
                notification = rechecked
            self._metrics.delivery_attempts.labels(receiver_type=kind).inc()
            if digest.variant(notification):
                context = await asyncio.to_thread(self._noise_context, notification)
            elif self._cached(notification.run_id):
                context = self.context(notification)
            else:
                context = await asyncio.to_thread(self.context, notification)
            await self._send(notification, receiver, context)
        except Exception as exc:  # the boundary: every failure is recorded, none escapes
            failure = as_send_error(exc)
            if failure.reason == "internal":
                log.error("delivering notification %s raised", notification.id, exc_info=exc)
            self._metrics.notification_failures.labels(
                receiver_type=kind, reason=failure.reason
            ).inc()
            await self._failed(notification, failure, extra)
            return
        await asyncio.gather(*(self._mark_sent(i) for i in notification.ids))
        now = self._clock()
        self._metrics.notifications.labels(receiver_type=kind, result="sent").inc()
        self._metrics.receiver_notifications.labels(
            receiver=notification.receiver, result="sent"
        ).inc()
        latency = (now - notification.event_time).total_seconds()
        self._metrics.notification_latency.labels(receiver_type=kind).observe(max(latency, 0.0))
        log.info(
            "sent %s notification for %s to %s",
            kind,
            notification.run_id,
            notification.receiver,
            extra=extra,
        )

    def _recheck(self, digest: Notification) -> Notification | None:
        with open_state(self._store) as state:
            return recheck(state, self._noise, digest, self._clock())

    async def _send(
        self, notification: Notification, receiver: ReceiverSettings, context: dict[str, Any]
    ) -> None:
        assert self._email is not None and self._webhook is not None
        assert self._alertmanager is not None
        if receiver.email is not None:
            variant = digest.variant(notification)
            rendered = self._renderer.render_email(context, variant)
            mail = build_message(
                rendered,
                sender=self._settings.smtp.sender,
                to=receiver.email.to,
                cc=receiver.email.cc,
                notification_id=notification.id,
                fingerprint=digest.thread_key(notification),
                followup=notification.followup or bool(variant),
                domain=self._notify.link_domain,
            )
            await self._email.send(mail)
        elif receiver.webhook is not None:
            body = self._renderer.render_webhook(
                receiver.webhook.format, context, digest.variant(notification)
            )
            await self._webhook.send(receiver.webhook, body, notification_id=notification.id)
        elif receiver.alertmanager is not None:
            hold = receiver.alertmanager.hold_firing_s if receiver.send_resolved else None
            alerts = postable_alerts(context, digest.variant(notification), hold_firing_s=hold)
            await self._alertmanager.send(
                receiver.alertmanager, alerts, notification_id=notification.id
            )

    async def _mark_sent(self, notification_id: str) -> None:
        """Group commit only under backlog: without one, a mark is committed on the next turn
        of the loop (with the others that finished on this turn); with one, on the mark
        thread, and marks arriving while it commits go together in the next transaction.
        No send waits for a timer."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_mark.append((notification_id, future))
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._flush_marks())
        await future

    async def _flush_marks(self) -> None:
        loop = asyncio.get_running_loop()
        while self._to_mark:
            batch, self._to_mark = self._to_mark, []
            ids = [i for i, _ in batch]
            try:
                if self._marks.journaled and not self._backlog():
                    # well under a millisecond, at once: a thread hop would cost more
                    self._marks.record(ids, self._clock())
                else:  # on the mark thread, the loop sending on: marks group meanwhile
                    await loop.run_in_executor(
                        self._mark_thread, self._marks.record, ids, self._clock()
                    )
            except Exception as exc:  # the lease brings them back: the documented window
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for _, future in batch:
                    future.set_result(None)
                self._apply_marks()

    def _backlog(self) -> bool:
        """Claimed notifications are waiting for a worker: sends, not marks, are the
        bottleneck, and a commit per turn of the loop would slow them down."""
        return self._queue is not None and not self._queue.empty()

    def _apply_marks(self) -> None:
        """Journaled marks into the outbox soon (one applier at a time; it runs again if
        more came meanwhile). Durability does not wait for this."""
        if not self._marks.journaled:
            return
        self._apply_again = True
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._run_applier())

    async def _run_applier(self) -> None:
        while self._apply_again:
            self._apply_again = False
            try:
                await asyncio.to_thread(self._marks.apply)
            except Exception:  # the journal keeps them: applied at the next release
                log.exception("applying sent marks failed")
                return

    async def _failed(
        self, notification: Notification, exc: SendError, extra: dict[str, str]
    ) -> None:
        now = self._clock()
        age = (now - notification.created_at).total_seconds()
        if not exc.retriable:
            await self._dead(notification, exc.reason, exc.detail)
            return
        if age >= self._notify.max_age_s:
            await self._dead(notification, "expired", f"gave up after {age:.0f}s: {exc}")
            return
        limit = self._notify.max_attempts
        if limit is not None and notification.attempts >= limit:
            attempts = notification.attempts
            await self._dead(notification, "attempts", f"gave up after {attempts} attempts: {exc}")
            return
        delay = self.backoff(notification.attempts)
        if exc.retry_after is not None:  # the receiver's wish, within reason
            delay = max(delay, min(exc.retry_after, self._notify.retry_after_max_s))
        for notification_id in notification.ids:
            await asyncio.to_thread(
                self._outbox.mark_retry,
                notification_id,
                now + timedelta(seconds=delay),
                exc.reason,
                exc.detail,
            )
        self._metrics.notifications.labels(
            receiver_type=notification.receiver_type, result="retry"
        ).inc()
        self._metrics.receiver_notifications.labels(
            receiver=notification.receiver, result="retry"
        ).inc()
        log.warning(
            "notification %s failed (%s), retrying in %.1fs",
            notification.id,
            exc,
            delay,
            extra=extra,
        )

    def _spent(self, notification: Notification) -> tuple[str, str] | None:
        """(reason, detail) when a claimed notification is past its limits already: earlier
        attempts recorded no outcome (the process died mid-send, each time) and the lease
        brought it back. A first attempt always goes out, however old (after an outage)."""
        attempts, limit = notification.attempts, self._notify.max_attempts
        last = f"; last error: {notification.last_error}" if notification.last_error else ""
        if limit is not None and attempts > limit:
            return "attempts", f"gave up before attempt {attempts} (limit {limit}){last}"
        age = (self._clock() - notification.created_at).total_seconds()
        if attempts > 1 and age >= self._notify.max_age_s:
            return "expired", f"gave up after {age:.0f}s, before attempt {attempts}{last}"
        return None

    async def _dead(self, notification: Notification, reason: str, detail: str) -> None:
        for notification_id in notification.ids:
            await asyncio.to_thread(self._outbox.mark_dead, notification_id, reason, detail)
        self._metrics.notifications.labels(
            receiver_type=notification.receiver_type, result="dead"
        ).inc()
        self._metrics.receiver_notifications.labels(
            receiver=notification.receiver, result="dead"
        ).inc()
        log.error(
            "notification %s is dead (%s): %s",
            notification.id,
            reason,
            detail,
            extra={"notification_id": notification.id, "reason": reason},
        )

    def backoff(self, attempts: int) -> float:
        """Exponential with jitter: the n-th failure waits initial * 2^(n-1), capped, times a
        random factor in [0.5, 1] so that a recovering server is not hit in lockstep."""
        base = self._notify.backoff_initial_s * 2 ** min(max(attempts - 1, 0), 32)
        return float(min(base, self._notify.backoff_max_s) * self._rng.uniform(0.5, 1.0))

    # -- the template context -------------------------------------------------------------

    def context(self, notification: Notification) -> dict[str, Any]:
        """What templates see (documented in consumers/notify/templating.py); read at send time, so
        the mail shows the run's timeline and children as they are now."""
        alert = Alert.model_validate(notification.alert)
        event = alert.event.model_dump(mode="json")
        detail = self._run_detail(notification.run_id)
        timeline: list[dict[str, Any]] = []
        children: dict[str, Any] = {"total": 0, "by_status": {}, "failed": []}
        run: dict[str, Any] | None = None
        if detail is not None:
            run = detail.run
            timeline = [
                {
                    "status": entry.status,
                    "time": entry.time.isoformat(),
                    "seconds_in_state": entry.seconds_in_state,
                    "message": entry.message,
                }
                for entry in detail.timeline
            ]
            counts = Counter(child["status"] for child in detail.children)
            children = {
                "total": len(detail.children),
                "by_status": dict(counts),
                "failed": [c for c in detail.children if c["status"] == "Failed"][
                    :_MAX_FAILED_CHILDREN
                ],
            }
        return {
            "notification": {
                "id": notification.id,
                "receiver": notification.receiver,
                "attempt": notification.attempts,
                "created_at": notification.created_at.isoformat(),
            },
            "alert": alert.context(),
            "event": event,
            "run": run,
            "timeline": timeline,
            "children": children,
            "run_url": self._run_url(event),
        }

    def _noise_context(self, notification: Notification) -> dict[str, Any]:
        if notification.kind == NotificationKind.STORM:
            start, end = digest.storm_window(notification)
            held = stormed(self._store, notification.receiver, start, end)
            return digest.storm_context(notification, held)
        labels = group_labels(self._store, notification.group_key)
        return digest.digest_context(notification, labels, self._run_url)

    def _prefetch(self, claimed: list[Notification]) -> None:
        """A warm-up: when a read fails, each delivery reads again and records its failure."""
        try:
            for run_id in dict.fromkeys(n.run_id for n in claimed):
                self._run_detail(run_id)
        except Exception as exc:
            log.warning("reading the claimed runs failed (%s: %s)", type(exc).__name__, exc)

    def _cached(self, run_id: str) -> bool:
        with self._runs_lock:
            cached = self._runs.get(run_id)
        return cached is not None and time.monotonic() - cached[0] < _RUN_CACHE_S

    def _run_detail(self, run_id: str) -> RunDetail | None:
        """An alert's email and webhooks are sent together: they share one read of the run
        (kept for a second, so no notification shows a stale timeline)."""
        now = time.monotonic()
        with self._runs_lock:
            cached = self._runs.get(run_id)
            if cached is not None and now - cached[0] < _RUN_CACHE_S:
                return cached[1]
        detail = get_run(self._store, run_id, now=self._clock())
        with self._runs_lock:
            if len(self._runs) > _RUN_CACHE_SIZE:
                self._runs = {k: v for k, v in self._runs.items() if now - v[0] < _RUN_CACHE_S}
            self._runs[run_id] = (now, detail)
        return detail

    def _run_url(self, event: dict[str, Any]) -> str | None:
        template = self._settings.run_url_template
        if not template:
            return None
        values = {k: quote(str(v), safe="") for k, v in event.items() if v is not None}
        try:
            return template.format_map(values)
        except (KeyError, IndexError, ValueError) as exc:
            log.warning("run_url_template %r cannot be filled: %s", template, exc)
            return None
