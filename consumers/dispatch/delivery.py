"""Delivering one claimed notification: the stage between the claim loop's queue and a
receiver, with one boundary around everything that can go wrong.

In order: the retry policy's limits (consumers.dispatch.retry), the receiver, a digest's
re-check against the noise policy (silenced or inhibited meanwhile), the reads its template
context needs and the context itself (consumers.dispatch.context), the send
(consumers.dispatch.send), and the outcome: marked sent (consumers.dispatch.marks), or a
failure turned by the retry policy into a retry time or dead, recorded on the row. The
decisions are pure functions; this module does the reads and writes around them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from consumers.config.settings import Settings
from consumers.dispatch import context as contexts
from consumers.dispatch import retry
from consumers.dispatch.digests import resolve_receiver
from consumers.dispatch.marks import MarkStage
from consumers.dispatch.runs import RunCache
from consumers.dispatch.send import Senders
from consumers.model.errors import SendError
from consumers.model.notifications import Notification
from consumers.noise.policy import NoisePolicy
from consumers.notify.failures import as_send_error
from consumers.outbox.recheck import recheck
from consumers.store import Store
from consumers.store.digests import group_labels, stormed
from consumers.store.outbox import Outbox
from consumers.store.outbox_state import open_state
from consumers.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class Delivery:
    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        settings: Settings,
        metrics: Metrics,
        *,
        senders: Senders,
        marks: MarkStage,
        runs: RunCache,
        noise: NoisePolicy,
        clock: Callable[[], datetime],
        rng: random.Random,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._settings = settings
        self._limits = retry.Limits.of(settings.notify)
        self._metrics = metrics
        self._senders = senders
        self._marks = marks
        self._runs = runs
        self._noise = noise
        self._clock = clock
        self._rng = rng
        self._run_url = contexts.RunUrl(settings.run_url_template)

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
        spent = retry.spent(
            notification.attempts, self._age(notification), notification.last_error, self._limits
        )
        if spent is not None:
            await self._dead(notification, spent)
            return
        receiver = resolve_receiver(self._settings, notification.receiver)
        if receiver is None:
            await self._dead(
                notification, retry.Dead("unknown_receiver", "receiver not in the config")
            )
            return
        try:
            if notification.members:
                rechecked = await asyncio.to_thread(self._recheck, notification)
                if rechecked is None:
                    return  # every alert of the digest was silenced or inhibited meanwhile
                notification = rechecked
            self._metrics.delivery_attempts.labels(receiver_type=kind).inc()
            variant = contexts.variant(notification)
            context = await self._context(notification, variant)
            await self._senders.send(notification, receiver, context, variant)
        except Exception as exc:  # the boundary: every failure is recorded, none escapes
            failure = as_send_error(exc)
            if failure.reason == "internal":
                log.error("delivering notification %s raised", notification.id, exc_info=exc)
            self._metrics.notification_failures.labels(
                receiver_type=kind, reason=failure.reason
            ).inc()
            await self._failed(notification, failure, extra)
            return
        await asyncio.gather(*(self._marks.mark(i) for i in notification.ids))
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

    def _age(self, notification: Notification) -> float:
        return (self._clock() - notification.created_at).total_seconds()

    def _recheck(self, digest: Notification) -> Notification | None:
        with open_state(self._store) as state:
            return recheck(state, self._noise, digest, self._clock())

    async def _context(self, notification: Notification, variant: str) -> dict[str, Any]:
        """On the loop when the run is cached (no I/O), else on a thread: the reads and,
        for a digest of many alerts, the building too stay off the loop."""
        if not variant:
            hit, detail = self._runs.lookup(notification.run_id)
            if hit:
                return contexts.alert_context(notification, detail, self._run_url)
        return await asyncio.to_thread(self._read_context, notification, variant)

    def _read_context(self, notification: Notification, variant: str) -> dict[str, Any]:
        """The reads a context needs, then the context (consumers.dispatch.context)."""
        if variant == "storm":
            start, end = contexts.storm_window(notification)
            held = stormed(self._store, notification.receiver, start, end)
            return contexts.storm_context(notification, held)
        if variant == "digest":
            labels = group_labels(self._store, notification.group_key)
            return contexts.digest_context(notification, labels, self._run_url)
        detail = self._runs.get(notification.run_id)
        return contexts.alert_context(notification, detail, self._run_url)

    async def _failed(
        self, notification: Notification, failure: SendError, extra: dict[str, str]
    ) -> None:
        decision = retry.after_failure(
            failure,
            notification.attempts,
            self._age(notification),
            self._limits,
            self._rng.uniform(*retry.JITTER),
        )
        if isinstance(decision, retry.Dead):
            await self._dead(notification, decision)
            return
        due = self._clock() + timedelta(seconds=decision.delay_s)
        for notification_id in notification.ids:
            await asyncio.to_thread(
                self._outbox.mark_retry, notification_id, due, failure.reason, failure.detail
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
            failure,
            decision.delay_s,
            extra=extra,
        )

    async def _dead(self, notification: Notification, dead: retry.Dead) -> None:
        for notification_id in notification.ids:
            await asyncio.to_thread(
                self._outbox.mark_dead, notification_id, dead.reason, dead.detail
            )
        self._metrics.notifications.labels(
            receiver_type=notification.receiver_type, result="dead"
        ).inc()
        self._metrics.receiver_notifications.labels(
            receiver=notification.receiver, result="dead"
        ).inc()
        log.error(
            "notification %s is dead (%s): %s",
            notification.id,
            dead.reason,
            dead.detail,
            extra={"notification_id": notification.id, "reason": dead.reason},
        )
