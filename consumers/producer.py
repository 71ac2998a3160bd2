"""Publishing to Kafka: run events (`runwatch emit`, the simulator) and dead letters."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from consumers.decoding import EventFormat
from consumers.encoding import encode
from consumers.errors import BrokerError
from consumers.events import RunStatusEvent
from consumers.settings import KafkaSettings
from consumers.store.writer import DeadLetter

log = logging.getLogger(__name__)

# Header names on dead letters; documented in the README so that tools can re-drive them.
REASON_HEADER = "runwatch.reason"
ERROR_HEADER = "runwatch.error"
TOPIC_HEADER = "runwatch.source.topic"
PARTITION_HEADER = "runwatch.source.partition"
OFFSET_HEADER = "runwatch.source.offset"
_MAX_HEADER_ERROR = 1000


def make_producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """acks=all: a dead letter or an emitted event is only 'sent' once every in-sync
    replica has it."""
    options: dict[str, Any] = {
        **settings.client_options(),
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
        self._producer.close(timeout=10)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.close()


def _headers(letter: DeadLetter) -> list[tuple[str, bytes | None]]:
    error = letter.error[:_MAX_HEADER_ERROR]
    # The source's own headers first (without runwatch's, if it was a dead letter already).
    source = [(name, value) for name, value in letter.headers if not name.startswith("runwatch.")]
    return [
        *source,
        (REASON_HEADER, letter.reason.encode()),
        (ERROR_HEADER, error.encode("utf-8", "backslashreplace")),
        (TOPIC_HEADER, letter.topic.encode()),
        (PARTITION_HEADER, str(letter.partition).encode()),
        (OFFSET_HEADER, str(letter.offset).encode()),
    ]


class DeadLetterPublisher:
    """Copies undecodable messages, byte for byte, to the dead-letter topic with why."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = make_producer(settings)
        self._topic = settings.dead_letter_topic

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Blocks until the broker has every letter: the caller commits offsets next."""
        if not letters:
            return
        futures = [
            self._producer.send(
                self._topic, value=letter.payload, key=letter.key, headers=_headers(letter)
            )
            for letter in letters
        ]
        try:
            for future in futures:
                future.get(timeout=30)
        except KafkaError as exc:
            raise BrokerError(f"dead-letter publish to {self._topic} failed: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=10)
