"""The consumer loop: poll a batch, hand it to ingest, commit offsets only after it is stored.

Auto-commit is off. An offset is committed (as last offset + 1, per partition) only after the
handler returned, i.e. after the store transaction holding the batch committed. A crash
anywhere before that makes Kafka deliver the batch again, and the store's natural keys make
the replay a no-op: at-least-once delivery, exactly-once effect.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.errors import BrokerError, RunwatchError
from consumers.metrics import Metrics
from consumers.settings import KafkaSettings

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[Any]], object]

_POLL_TIMEOUT_MS = 100  # how quickly a stop request is noticed when the topic is idle
_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 30.0


def make_consumer(settings: KafkaSettings, **overrides: Any) -> KafkaConsumer:
    options: dict[str, Any] = {
        **settings.client_options(),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "max_poll_records": settings.max_poll_records,
        # Return as soon as anything arrived (latency), but take big batches when there is
        # a backlog (throughput): fetch_max_wait only applies when there is nothing to fetch.
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_partition_fetch_bytes": max(settings.max_message_bytes * 2, 1_048_576),
    }
    options.update(overrides)
    try:
        return KafkaConsumer(**options)
    except KafkaError as exc:
        raise BrokerError(f"cannot connect to {settings.bootstrap_servers}: {exc}") from exc


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: KafkaLoop) -> None:
        self._loop = loop

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Whatever was stored but not yet committed is committed before another member
        # takes the partition, so it does not redo (harmless, but slow) work.
        self._loop.commit_pending()
        for tp in revoked:
            self._loop.forget(tp)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))


class KafkaLoop:
    def __init__(
        self,
        settings: KafkaSettings,
        handler: Handler,
        metrics: Metrics,
        *,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._metrics = metrics
        self._factory = consumer_factory or (lambda: make_consumer(settings))
        self._consumer: KafkaConsumer | None = None
        self._pending: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self.connected = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Blocks until `stop` is set; the batch in hand is finished and committed first."""
        consumer = self._consumer = self._factory()
        consumer.subscribe([self._settings.topic], listener=_CommitOnRevoke(self))
        self.connected.set()
        try:
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=_POLL_TIMEOUT_MS)
                if not polled:
                    continue
                records = [record for batch in polled.values() for record in batch]
                self._handle_until_done(records, stop)
                self._pending = {tp: batch[-1].offset + 1 for tp, batch in polled.items() if batch}
                self._next.update(self._pending)
                self.commit_pending()
                self._update_lag(consumer)
        finally:
            self.commit_pending()
            self.connected.clear()
            consumer.close(autocommit=False)
            self._consumer = None

    def _handle_until_done(self, records: list[Any], stop: threading.Event) -> None:
        """A batch is never skipped: a store or broker that is down is waited for, with
        backoff; the process may be stopped meanwhile, and then nothing is committed."""
        delay = _BACKOFF_START_S
        while True:
            try:
                self._handler(records)
                return
            except Exception as exc:
                retriable = isinstance(exc, RunwatchError) and exc.retriable
                self._metrics.store_errors.inc()
                log.error(
                    "batch of %d messages failed (%s, retrying in %.1fs): %s",
                    len(records),
                    "retriable" if retriable else "unexpected",
                    delay,
                    exc,
                    exc_info=not retriable,
                )
            if stop.wait(delay):
                raise _StoppedError
            delay = min(delay * 2, _BACKOFF_MAX_S)

    def commit_pending(self) -> None:
        if not self._pending or self._consumer is None:
            return
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._pending.items()}
        try:
            self._consumer.commit(offsets)
            self._metrics.commits.labels(result="ok").inc()
            self._pending = {}
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on; the batch will be redelivered and deduplicated by the store.
            self._metrics.commits.labels(result="failed").inc()
            log.warning("offset commit failed: %s", exc)
            self._pending = {}

    def forget(self, tp: TopicPartition) -> None:
        """A revoked partition's lag is another member's to report now."""
        self._next.pop(tp, None)
        with contextlib.suppress(KeyError):
            self._metrics.consumer_lag.remove(str(tp.partition))

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        # highwater comes with fetch responses and is right on every broker tried;
        # end_offsets() is wrong on some (see docs/TEST-INFRA), so it is not used.
        for tp, next_offset in self._next.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self._metrics.consumer_lag.labels(partition=str(tp.partition)).set(
                    max(highwater - next_offset, 0)
                )


class _StoppedError(Exception):
    """Stop requested while a batch was waiting for a retry: leave it uncommitted."""


def run_until_stopped(loop: KafkaLoop, stop: threading.Event) -> None:
    """Thread target: a stop during a retry wait ends quietly, with nothing committed."""
    try:
        loop.run(stop)
    except _StoppedError:
        log.info("stopped while retrying a batch; it will be redelivered")
