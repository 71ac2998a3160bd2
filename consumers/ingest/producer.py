"""Publishing to Kafka: run events (`runwatch emit`, the simulator) and dead letters.

The dead-letter path must never hold a partition for a letter the broker refuses, and never
drop one while the broker is merely away:
- a letter larger than `kafka.dead_letter_max_bytes` goes out truncated, with headers
  saying so (the store keeps the payload, see store.dead_letter_payload_max_bytes);
- a refusal that sending again cannot cure (too large, topic invalid or not authorised) is
  retried `kafka.dead_letter_max_attempts` times, then given up: logged, counted in
  runwatch_dead_letters_unpublished_total, and the batch moves on;
- a broker that is away is waited for, however long (the batch is held, its offsets not
  committed), and a producer stuck in a state it cannot leave is replaced by a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.record.default_records import DefaultRecordBatchBuilder

from consumers.config.service import KafkaSettings
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.ingest.kafka_clients import (
    BOOTSTRAP_TIMEOUT_MS,
    close_producer,
    is_retriable,
    recovery_options,
    refusal,
    stuck_producer,
)
from consumers.model.errors import BrokerError, RunwatchError
from consumers.model.events import RunStatusEvent
from consumers.model.redact import redact

if TYPE_CHECKING:  # types only: publishing runs (the client) loads neither the store writer
    from consumers.store.writer import DeadLetter
    from consumers.telemetry.metrics import Metrics  # nor the metrics (prometheus_client)

log = logging.getLogger(__name__)

# Header names on dead letters; documented in the README so that tools can re-drive them.
REASON_HEADER = "runwatch.reason"
ERROR_HEADER = "runwatch.error"
TOPIC_HEADER = "runwatch.source.topic"
PARTITION_HEADER = "runwatch.source.partition"
OFFSET_HEADER = "runwatch.source.offset"
# Only on a letter published truncated: the sizes of the original key and value.
TRUNCATED_HEADER = "runwatch.truncated"
SIZE_HEADER = "runwatch.source.size"
KEY_SIZE_HEADER = "runwatch.source.key_size"
_MAX_HEADER_ERROR = 1000


def make_producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """acks=all: a dead letter or an emitted event is only 'sent' once every in-sync
    replica has it. Overrides win (the dead-letter producer sets its own size limit)."""
    options: dict[str, Any] = {
        **settings.client_options(),
        **recovery_options(settings.reconnect_backoff_max_ms),
        "acks": "all",
        "linger_ms": 2,
        "retries": 5,
        "max_request_size": max(settings.max_message_bytes * 2, 1_048_576),
    }
    options.update(overrides)
    try:
        return KafkaProducer(**options)
    except KafkaError as exc:
        raise BrokerError(
            f"cannot connect producer to {settings.bootstrap_servers}: {exc}"
        ) from exc


class EventPublisher:
    """Keyed by the run tree's root, so one pipeline's events stay in order in one partition."""

    def __init__(self, settings: KafkaSettings, *, topic: str | None = None) -> None:
        self._producer = make_producer(settings)
        self._topic = topic or settings.topic

    def publish(self, event: RunStatusEvent, fmt: EventFormat = EventFormat.NATIVE) -> None:
        self.publish_raw(encode(event, fmt), key=event.root_run_id.encode())

    def publish_raw(self, value: bytes | None, *, key: bytes | None = None) -> None:
        self._producer.send(self._topic, value=value, key=key)

    def flush(self, timeout: float = 30.0) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise BrokerError(f"publishing to {self._topic} failed: {exc}") from exc

    def close(self) -> None:
        close_producer(self._producer, timeout=10)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.close()


def _headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    error = redact(letter.error)[:_MAX_HEADER_ERROR]  # as stored: no credential leaves
    # The source's own headers first (without runwatch's, if it was a dead letter already);
    # a null header value goes out empty.
    source = [
        (name, value or b"") for name, value in letter.headers if not name.startswith("runwatch.")
    ]
    return [
        *source,
        (REASON_HEADER, letter.reason.encode()),
        (ERROR_HEADER, error.encode("utf-8", "backslashreplace")),
        (TOPIC_HEADER, letter.topic.encode()),
        (PARTITION_HEADER, str(letter.partition).encode()),
        (OFFSET_HEADER, str(letter.offset).encode()),
    ]


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """kafka-python's own upper bound for a record alone in a batch: what it checks against
    max_request_size, and what the broker's message.max.bytes limits."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One dead letter as it goes on the topic."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    truncated: bool


def fit(letter: DeadLetter, max_bytes: int) -> Outgoing:
    """The letter as a record of at most `max_bytes`: whole if it fits, else cut, value
    first (the key too if it alone would take more than half), with headers saying so."""
    key, value = letter.key, letter.payload
    if key is None and value is None:
        value = b""  # Kafka refuses a record with neither; the reason says it was empty
    headers = _headers(letter)
    if record_size(key, value, headers) <= max_bytes:
        return Outgoing(key, value, tuple(headers), truncated=False)
    headers += [
        (TRUNCATED_HEADER, b"true"),
        (SIZE_HEADER, str(len(value or b"")).encode()),
        (KEY_SIZE_HEADER, str(len(key or b"")).encode()),
    ]
    room = max(max_bytes - record_size(None, None, headers), 0)
    if key is not None and len(key) + len(value or b"") > room and len(key) > room // 2:
        key = key[: room // 2]
    value = (value or b"")[: max(room - len(key or b""), 0)]
    while value and record_size(key, value, headers) > max_bytes:  # varint widths
        value = value[: len(value) - (record_size(key, value, headers) - max_bytes)]
    return Outgoing(key, value, tuple(headers), truncated=True)


def make_dead_letter_producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """max_request_size is the dead-letter limit itself: `fit` keeps every record under it,
    so the client never refuses one, and nothing larger reaches the broker."""
    options: dict[str, Any] = {
        "max_request_size": settings.dead_letter_max_bytes,
        # send() waits this long for the topic's metadata: a broker that is away must not
        # hold the writer thread past a stop request.
        "max_block_ms": 5000,
    }
    return make_producer(settings, **(options | overrides))


Source = tuple[str, int, int]  # topic, partition, offset of the message a letter is about

_ROUND_S = 0.5  # longest wait for acknowledgements before looking at stop and stalls again
_RETRY_BACKOFF_S = 0.2
_STALL_S = 10.0  # no acknowledgement this long: the producer may be stuck, replace it
_STOP_GRACE_S = 5.0  # after a stop request, how long unacknowledged letters are waited for
_HOLD_LOG_AFTER_S = 5.0  # a broker this slow to acknowledge is worth a line in the log
_HOLD_LOG_EVERY_S = 30.0


def _source(letter: DeadLetter) -> Source:
    return (letter.topic, letter.partition, letter.offset)


class DeadLetterPublisher:
    """Copies undecodable messages to the dead-letter topic, with why and where from."""

    def __init__(
        self,
        settings: KafkaSettings,
        metrics: Metrics | None = None,
        *,
        stop: threading.Event | None = None,
        producer_factory: Callable[..., KafkaProducer] | None = None,
    ) -> None:
        self._topic = settings.dead_letter_topic
        self._max_bytes = settings.dead_letter_max_bytes
        self._max_attempts = settings.dead_letter_max_attempts
        self._factory = producer_factory or (
            lambda **options: make_dead_letter_producer(settings, **options)
        )
        self._metrics = metrics
        self._stop = stop or threading.Event()
        self._producer = self._factory()
        self._in_flight: dict[Source, Any] = {}  # FutureRecordMetadata of the producer in use
        self._sent_at: dict[Source, float] = {}
        self._strikes: dict[Source, int] = {}

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Returns once the broker has every letter, or has refused one for good (given up:
        it stays in the store). While the broker is away this waits; only a stop request
        ends the wait, with a retriable BrokerError (the batch stays uncommitted)."""
        pending = {_source(letter): (letter, fit(letter, self._max_bytes)) for letter in letters}
        held_since: float | None = None
        logged_at = 0.0
        stopping_at: float | None = None
        while pending:
            failures, waiting = self._round(pending)
            replace = ""
            for source, exc in failures.items():
                if self._refused(source, exc, pending):
                    replace = replace or f"{type(exc).__name__}: {exc}"
            if not pending:
                return
            now = time.monotonic()
            stalled = [s for s in waiting if now - self._sent_at.get(s, now) > _STALL_S]
            if stalled and not replace:
                replace = f"no acknowledgement for {_STALL_S:.0f}s"
            if replace:
                self._replace_producer(replace)
            held = waiting or any(is_retriable(exc) for exc in failures.values())
            if held:
                held_since = held_since or now
                if now - held_since >= _HOLD_LOG_AFTER_S and now - logged_at >= _HOLD_LOG_EVERY_S:
                    logged_at = now
                    log.warning(
                        "dead-letter topic %s has not acknowledged %d letters for %.0fs; "
                        "holding the batch until it does",
                        self._topic,
                        len(pending),
                        now - held_since,
                    )
            if self._stop.is_set():
                stopping_at = stopping_at or now
                if now - stopping_at >= _STOP_GRACE_S:
                    raise BrokerError(
                        f"stopped with {len(pending)} dead letters not acknowledged by "
                        f"{self._topic}; the batch stays uncommitted"
                    )
            if failures:
                self._stop.wait(_RETRY_BACKOFF_S)

    def _round(
        self, pending: dict[Source, tuple[DeadLetter, Outgoing]]
    ) -> tuple[dict[Source, BaseException], list[Source]]:
        """Send what is not in flight, then wait (a little) for acknowledgements. Returns the
        failures and the letters still waiting; acknowledged ones leave `pending`."""
        failures: dict[Source, BaseException] = {}
        for source, (_, out) in pending.items():
            if source in self._in_flight:
                continue
            try:
                future = self._producer.send(
                    self._topic, key=out.key, value=out.value, headers=list(out.headers)
                )
            except Exception as exc:  # the topic's name, a closed producer, no metadata yet
                failures[source] = exc
                continue
            self._in_flight[source] = future
            self._sent_at.setdefault(source, time.monotonic())
        deadline = time.monotonic() + _ROUND_S
        waiting: list[Source] = []
        for source in [s for s in pending if s in self._in_flight]:
            future = self._in_flight[source]
            remaining = deadline - time.monotonic()
            if not future.is_done and remaining > 0:
                with contextlib.suppress(Exception):  # the outcome is read from the future
                    future.get(timeout=remaining)
            if not future.is_done:
                waiting.append(source)
                continue
            del self._in_flight[source]
            if future.failed():
                failures[source] = future.exception
                continue
            letter, out = pending.pop(source)
            self._delivered(source, letter, out)
        return failures, waiting

    def _delivered(self, source: Source, letter: DeadLetter, out: Outgoing) -> None:
        self._strikes.pop(source, None)
        self._sent_at.pop(source, None)
        if out.truncated:
            if self._metrics is not None:
                self._metrics.dead_letters_truncated.inc()
            log.info(
                "dead letter %s[%d]@%d published truncated to %d of %d bytes",
                *source,
                len(out.value or b""),
                len(letter.payload or b""),
            )

    def _refused(
        self,
        source: Source,
        exc: BaseException,
        pending: dict[Source, tuple[DeadLetter, Outgoing]],
    ) -> bool:
        """Count one refusal of a letter; give it up after max_attempts. True when the
        producer, not the letter, is what failed."""
        self._sent_at.pop(source, None)
        if is_retriable(exc):
            return False  # the broker is away or moving: sent again, however long it takes
        strikes = self._strikes[source] = self._strikes.get(source, 0) + 1
        letter = pending[source][0]
        if strikes < self._max_attempts:
            log.warning(
                "dead letter %s[%d]@%d refused (attempt %d of %d): %s: %s",
                *source,
                strikes,
                self._max_attempts,
                type(exc).__name__,
                str(exc),
            )
        else:
            del pending[source]
            self._strikes.pop(source, None)
            if self._metrics is not None:
                self._metrics.dead_letters_unpublished.labels(error=refusal(exc)).inc()
            log.error(
                "dead letter %s[%d]@%d (reason %s) given up after %d attempts to publish it "
                "to %s: %s: %s; it stays in the store",
                *source,
                letter.reason,
                strikes,
                self._topic,
                type(exc).__name__,
                str(exc),
            )
        return stuck_producer(exc)

    def _replace_producer(self, why: str) -> None:
        """A fresh producer (new id, epoch, sequences, connections); what the old one had in
        flight is sent again with it. Kept as is when no broker answers to build one."""
        try:
            fresh = self._factory(bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        except (RunwatchError, KafkaError) as exc:
            log.warning("dead-letter producer not replaced (%s): %s", why, str(exc))
            self._sent_at = dict.fromkeys(self._sent_at, time.monotonic())
            return
        old, self._producer = self._producer, fresh
        self._in_flight.clear()
        self._sent_at.clear()
        close_producer(old, timeout=0)
        if self._metrics is not None:
            self._metrics.kafka_clients_recreated.labels(client="producer").inc()
        log.warning("dead-letter producer replaced by a new one: %s", why)

    def close(self) -> None:
        """What was not acknowledged within the timeout is dropped here: its batch was not
        committed, so it is consumed, stored (a no-op) and published again after a restart."""
        close_producer(self._producer, timeout=5)
