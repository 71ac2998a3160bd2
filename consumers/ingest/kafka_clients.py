"""What runwatch needs from kafka-python's clients beyond their defaults: to come back within
a second or two of the broker answering again, to be replaced when they are stuck, and to
close without racing their own IO thread.

kafka-python internals relied on here (3.0.x), each checked in tests/test_kafka_recovery.py:
- reconnects back off exponentially from `reconnect_backoff_ms` to
  `reconnect_backoff_max_ms` (30 s by default, with +-20 % jitter): after an outage of a few
  seconds the next attempt can come many seconds after the broker is back;
- `KafkaConsumer` runs its network loop on an IO thread (`consumer._client._net`), but its
  `close()` closes the connections from the calling thread while that loop may be reading
  them (`'NoneType' object has no attribute 'recv'`, logged with a traceback);
- the idempotent producer recovers UnknownProducerId and friends by bumping its epoch; a
  broker that lost its state (Tansu with memory storage) answers that bump with an error,
  and the producer stays in a fatal state for good.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kafka_errors
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

# How long a (re)created client waits for a first broker before its constructor gives up.
BOOTSTRAP_TIMEOUT_MS = 5000


def recovery_options(reconnect_backoff_max_ms: int) -> dict[str, Any]:
    """Options every client gets, so that a broker that is back is noticed at once."""
    return {
        "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": reconnect_backoff_max_ms,
        "retry_backoff_ms": 100,
    }


# The producer's own state is wrong, not the letter: a fresh producer (new id, epoch and
# sequence numbers) is the way out. KafkaError itself is what a producer in a fatal state
# fails every batch with ("Unexpected error in InitProducerIdResponse", "Producer is closed").
_STUCK_PRODUCER = (
    kafka_errors.UnknownProducerIdError,
    kafka_errors.OutOfOrderSequenceNumberError,
    kafka_errors.InvalidProducerEpochError,
    kafka_errors.ProducerFencedError,
    kafka_errors.InvalidProducerIdMappingError,
    kafka_errors.InvalidTxnStateError,
    kafka_errors.IllegalStateError,
)

# The broker refuses this record whatever producer sends it.
_REFUSED_RECORD = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.CorruptRecordError,
    kafka_errors.InvalidTopicError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.InvalidRequiredAcksError,
)


_TOO_LARGE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordListTooLargeError)
_TOPIC = (kafka_errors.InvalidTopicError, kafka_errors.TopicAuthorizationFailedError)


def is_retriable(exc: BaseException) -> bool:
    """Doing the same again later can succeed without anyone acting (a broker away)."""
    return isinstance(exc, kafka_errors.KafkaError) and bool(exc.retriable)


def stuck_producer(exc: BaseException) -> bool:
    """The producer instance, not the record, is what failed: replace the producer."""
    if isinstance(exc, _REFUSED_RECORD) or is_retriable(exc):
        return False
    return isinstance(exc, _STUCK_PRODUCER) or type(exc) is kafka_errors.KafkaError


def close_consumer(consumer: KafkaConsumer) -> None:
    """Leave the group while the IO thread runs, then stop that thread before the
    connections are closed, so that nothing reads a socket being closed."""
    if getattr(consumer, "_closed", False):
        return
    coordinator = getattr(consumer, "_coordinator", None)
    net = getattr(getattr(consumer, "_client", None), "_net", None)
    try:
        if coordinator is not None and net is not None:
            coordinator.close(autocommit=False, timeout_ms=consumer.config["request_timeout_ms"])
            net.stop(timeout_ms=5000)  # idempotent; close() drives what is left itself
        consumer.close(autocommit=False)
    except Exception as exc:  # a consumer being thrown away: nothing left to protect
        log.warning("closing the Kafka consumer failed: %s", str(exc))


def refusal(exc: BaseException) -> str:
    """The `error` label of a dead letter given up on the dead-letter topic."""
    if isinstance(exc, _TOO_LARGE):
        return "too_large"
    if isinstance(exc, _TOPIC):
        return "topic"
    if isinstance(exc, ValueError | TypeError) and "topic" in str(exc).lower():
        return "topic"  # kafka-python checks topic names before sending
    if stuck_producer(exc):
        return "producer"
    return "other"


def close_producer(producer: KafkaProducer, timeout: float) -> None:
    """kafka-python's close() flushes first and raises when that times out (a broker away,
    a producer in a fatal state) before it stops the sender thread, which then stays with
    its sockets. Failing that, the sender is told to abort what it holds, and close again."""
    try:
        producer.close(timeout=timeout)
        return
    except KafkaError as exc:
        log.warning(
            "Kafka producer not flushed within %.0fs, dropping what it held: %s", timeout, str(exc)
        )
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)
    try:
        producer.close(timeout=0)
    except KafkaError as exc:
        log.warning("closing the Kafka producer failed: %s", str(exc))


class _CancelledAtClose(logging.Filter):
    """kafka-python logs the metadata refresh its own close() cancels as an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR
            and record.msg == "Metadata refresh: failed %s"
            and record.args is not None
            and any(isinstance(arg, kafka_errors.Cancelled) for arg in record.args)
        )


logging.getLogger("kafka.cluster").addFilter(_CancelledAtClose())
