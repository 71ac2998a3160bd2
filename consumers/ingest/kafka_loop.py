"""The consumer loop: poll a batch, hand it to ingest, commit offsets only after it is stored.

Auto-commit is off. An offset is committed (as last offset + 1, per partition) only after the
batch's store transaction committed. A crash anywhere before that makes Kafka deliver the
batch again, and the store's natural keys make the replay a no-op: at-least-once delivery,
exactly-once effect.

Two threads share the work so that Python (fetching, decoding) and the database (which
releases the GIL while it writes) run at the same time:

    consumer thread: poll -> prepare (decode) -> queue ----> writer thread: write (store)
                     commit <------------------- done offsets <---/

Only the consumer thread touches the KafkaConsumer (it is not thread-safe).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from consumers.config.service import KafkaSettings
from consumers.ingest.kafka_clients import close_consumer, recovery_options
from consumers.ingest.store_assignment import StoreAssignment
from consumers.model.errors import BrokerError, RunwatchError
from consumers.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

P = TypeVar("P")
Offsets = dict[TopicPartition, int]

_POLL_TIMEOUT_MS = 100  # how quickly a stop request is noticed when the topic is idle
_BACKOFF_START_S = 0.2
# A store (or broker) that is back is written to within this: resuming quickly matters more
# than sparing a database that refuses one small transaction a second.
_BACKOFF_MAX_S = 1.0
_RETRY_LOG_EVERY_S = 30.0  # a failing batch is logged once, then at most this often
_IN_FLIGHT = 2  # prepared batches waiting for the writer: bounds memory, gives backpressure
# The first batch after joining the group (at start, after a broker outage) takes at most this
# many messages, and each later one twice the one before, up to max_poll_records: a backlog
# found on joining is stored from its first messages within a fraction of a second, not after
# one full batch (5,000 took ~1.1 s to decode and store after a 15 s outage: measured by
# benchmarks/chaos.py --part broker).
_FIRST_BATCH = 500
_STORE_COMMIT_TIMEOUT_MS = 1000


def make_consumer(settings: KafkaSettings, **overrides: Any) -> KafkaConsumer:
    options: dict[str, Any] = {
        **settings.client_options(),
        **recovery_options(settings.reconnect_backoff_max_ms),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "max_poll_records": settings.max_poll_records,
        # Return as soon as anything arrived (latency), but take big batches when there is
        # a backlog (throughput): fetch_max_wait only applies when there is nothing to fetch.
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_partition_fetch_bytes": max(settings.max_message_bytes * 2, 1_048_576),
    }
    if settings.group_instance_id is not None:
        options["group_instance_id"] = settings.group_instance_id
    options.update(overrides)
    try:
        return KafkaConsumer(**options)
    except KafkaError as exc:
        raise BrokerError(f"cannot connect to {settings.bootstrap_servers}: {exc}") from exc


def _coordinator_connected(consumer: KafkaConsumer) -> bool:
    """For readiness, read on the consumer thread after each poll: kafka-python forgets the
    coordinator within a second of losing the broker and finds it again once it is back."""
    coordinator = getattr(consumer, "_coordinator", None)
    client = getattr(consumer, "_client", None)
    node = getattr(coordinator, "coordinator_id", None)
    return node is not None and client is not None and bool(client.connected(node))


class StoppedError(RunwatchError):
    """Stop requested while a batch was waiting for a retry: it stays uncommitted."""


class _Writer(threading.Thread, Generic[P]):
    """Writes prepared batches in order; a batch is never skipped. A store or broker that is
    down is waited for with backoff, and a stop meanwhile leaves the batch uncommitted."""

    def __init__(self, write: Callable[[P], object], metrics: Metrics, stop: threading.Event):
        super().__init__(name="store-writer", daemon=True)
        self._write = write
        self._metrics = metrics
        self._stop_requested = stop
        # (prepared, offsets, messages, the assignment the batch was polled under)
        self.inbox: queue.Queue[tuple[P, Offsets, int, int] | None] = queue.Queue(_IN_FLIGHT)
        self._done: list[tuple[int, Offsets]] = []
        self._lock = threading.Lock()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while (item := self.inbox.get()) is not None:
                prepared, offsets, size, assignment = item
                self._write_until_done(prepared, size)
                with self._lock:
                    self._done.append((assignment, offsets))
                self.inbox.task_done()
            self.inbox.task_done()  # the stop sentinel
        except BaseException as exc:
            self.failure = exc
            self._stop_requested.set()
        finally:
            self._drain()

    def _drain(self) -> None:
        # Unblock a consumer thread waiting on join() or put() after we stopped.
        with contextlib.suppress(queue.Empty, ValueError):
            while True:
                self.inbox.get_nowait()
                self.inbox.task_done()

    def _write_until_done(self, prepared: P, size: int) -> None:
        delay = _BACKOFF_START_S
        failures = 0
        logged_at = 0.0
        while True:
            try:
                self._write(prepared)
                if failures:
                    log.info("batch of %d messages written after %d failures", size, failures)
                return
            except Exception as exc:
                failures += 1
                retriable = isinstance(exc, RunwatchError) and exc.retriable
                self._metrics.store_errors.inc()
                now = time.monotonic()
                if now - logged_at >= _RETRY_LOG_EVERY_S:
                    logged_at = now
                    log.error(
                        "batch of %d messages failed %d times (%s, retrying every %.1fs at "
                        "most): %s",
                        size,
                        failures,
                        "retriable" if retriable else "unexpected",
                        _BACKOFF_MAX_S,
                        exc,
                        exc_info=not retriable,
                    )
            if self._stop_requested.wait(delay):
                raise StoppedError("stopped while retrying a batch; it will be redelivered")
            delay = min(delay * 2, _BACKOFF_MAX_S)

    def discard_waiting(self) -> int:
        """At stop: batches not started are dropped, uncommitted; their partitions' next
        owner reads them again. Returns how many."""
        dropped = 0
        with contextlib.suppress(queue.Empty):
            while True:
                self.inbox.get_nowait()
                self.inbox.task_done()
                dropped += 1
        return dropped

    def take_done(self, assignment: int) -> Offsets:
        """The offsets of the batches written since the last call that were polled under
        `assignment`; the others are dropped (see KafkaLoop.assigned)."""
        with self._lock:
            done, self._done = self._done, []
        merged: Offsets = {}
        for polled_under, offsets in done:
            if polled_under == assignment:
                merged.update(offsets)  # in order, so the later offset wins
        return merged


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: KafkaLoop[Any]) -> None:
        self._loop = loop

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # kafka-python calls this on its IO thread, where nothing may block (a synchronous
        # commit raises there, and waiting for the writer could deadlock with the producer):
        # what is already stored is committed asynchronously; a batch still being written is
        # redelivered to the partition's next owner, and the store turns that into a no-op.
        self._loop.commit_done(blocking=False)
        for tp in revoked:
            self._loop.forget(tp)

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        # Evicted from the group (session expired, or a broker that forgot the group): a
        # commit would be refused, and the partitions' next owner reads them again.
        for tp in lost:
            self._loop.forget(tp)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        self._loop.assigned()


class KafkaLoop(Generic[P]):
    def __init__(
        self,
        settings: KafkaSettings,
        prepare: Callable[[Sequence[Any]], P],
        write: Callable[[P], object],
        metrics: Metrics,
        *,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
        store_assignment: StoreAssignment | None = None,
    ) -> None:
        """`store_assignment`: partitions from leases in the store (`kafka.assignment:
        store`) instead of the consumer group's rebalances."""
        self._settings = settings
        self._prepare = prepare
        self._write = write
        self._metrics = metrics
        self._factory = consumer_factory or (lambda: make_consumer(settings))
        self._store_assignment = store_assignment
        self._consumer: KafkaConsumer | None = None
        self._writer: _Writer[P] | None = None
        self._next: Offsets = {}
        self._uncommitted: Offsets = {}  # stored, commit failed: retried with the next commit
        self._uncommitted_lock = threading.Lock()
        self.connected = threading.Event()
        self.broker_connected = False  # the group coordinator is known and connected
        self.batch_cap = _FIRST_BATCH  # most messages the next poll takes (see _FIRST_BATCH)
        self._assignment = 0  # counts the group's assignments to this consumer (assigned())
        # The coordinator was seen disconnected since the records of the current assignment
        # were last read: a broker that comes back may have lost its log (see assigned()).
        self._cut_off = False

    def run(self, stop: threading.Event) -> None:
        """Blocks until `stop` is set; batches in hand are written and committed first."""
        consumer = self._consumer = self._factory()
        writer = self._writer = _Writer(self._write, self._metrics, stop)
        writer.start()
        self._attach(consumer)
        self.connected.set()
        try:
            while not stop.is_set():
                self.commit_done()
                self._heartbeat(consumer)
                # Read before the poll (its records may predate an assignment it brings)...
                assignment = self._assignment
                owned = bool(consumer.assignment())
                try:
                    polled = consumer.poll(
                        timeout_ms=_POLL_TIMEOUT_MS,
                        max_records=min(self.batch_cap, self._settings.max_poll_records),
                    )
                except KafkaError as exc:  # a state kafka-python does not leave by itself
                    consumer = self._replace_consumer(consumer, exc, stop)
                    continue
                connected = self.broker_connected = _coordinator_connected(consumer)
                if not connected:
                    self._cut_off = True
                store = self._store_assignment
                if store is not None:  # what `polled` holds is not committed after a resync
                    if store.recreated(consumer):
                        self._resync(consumer, from_start=True)
                    elif connected and self._cut_off:
                        self._resync(consumer, from_start=False)
                if not polled:
                    continue
                if not owned:  # ...unless nothing was owned: no position predates the poll
                    # (assigned() moves the assignment on only after a disconnection, so a
                    # graceful rebalance inside this poll leaves `assignment` current)
                    assignment = self._assignment
                if assignment == self._assignment:
                    self._cut_off = False  # records read under the current assignment
                self.batch_cap = min(self.batch_cap * 2, self._settings.max_poll_records)
                records = [record for batch in polled.values() for record in batch]
                offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items() if batch}
                item = (self._prepare(records), offsets, len(records), assignment)
                while not stop.is_set():
                    try:
                        writer.inbox.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        self._heartbeat(consumer)  # leases stay ours while the store is slow
                        continue
                self._update_lag(consumer, offsets)
        finally:
            stop.set()
            self.finish_in_flight()
            if self._store_assignment is not None:
                self._store_assignment.leave()
            self.connected.clear()
            self.broker_connected = False
            close_consumer(consumer)
            self._consumer = None
        if writer.failure is not None and not isinstance(writer.failure, StoppedError):
            raise writer.failure
        if isinstance(writer.failure, StoppedError):
            log.info("%s", writer.failure)

    def _replace_consumer(
        self, old: KafkaConsumer, exc: KafkaError, stop: threading.Event
    ) -> KafkaConsumer:
        """Close the consumer and build a new one, which joins the group afresh. What the
        writer finishes meanwhile was polled under the old assignment: it is not committed but
        read again (see assigned()), and the store makes that a no-op."""
        log.warning("Kafka consumer failed (%s: %s); replacing it", type(exc).__name__, str(exc))
        self.broker_connected = False
        close_consumer(old)
        with self._uncommitted_lock:
            self._uncommitted.clear()
        delay = _BACKOFF_START_S
        while True:
            try:
                consumer = self._factory()
                break
            except RunwatchError as failed:
                log.warning("new Kafka consumer not created yet: %s", str(failed))
                if stop.wait(delay):
                    # run()'s cleanup closes whatever is in hand: give it the closed one
                    return old
                delay = min(delay * 2, _BACKOFF_MAX_S)
        self._attach(consumer)
        self._consumer = consumer
        self._metrics.kafka_clients_recreated.labels(client="consumer").inc()
        return consumer

    def _attach(self, consumer: KafkaConsumer) -> None:
        """Join the group, or (store assignment) read the partitions leased already; the
        first heartbeat takes the rest."""
        store = self._store_assignment
        if store is None:
            consumer.subscribe([self._settings.topic], listener=_CommitOnRevoke(self))
        else:
            store.resync(consumer)

    def _heartbeat(self, consumer: KafkaConsumer) -> None:
        store = self._store_assignment
        if store is not None and store.due():
            store.beat(
                consumer, commit=self.commit_done, forget=self.forget, assigned=self.assigned
            )

    def _resync(self, consumer: KafkaConsumer, *, from_start: bool) -> None:
        """Store assignment, the broker back after it was away: what a rejoin does in a
        group (see assigned()): nothing polled before is committed, and every partition is
        read again from its committed offset. A group's generation makes the broker refuse
        a commit of the old positions that was under way when it went; this commit (no
        generation) is accepted, so when the topic was created again (`from_start`) every
        committed offset may be the old log's: the partitions are read from the start
        (auto_offset_reset), and that position committed over whatever landed."""
        assert self._store_assignment is not None
        log.info(
            "broker back%s: reading the leased partitions again from %s",
            ", topic created again" if from_start else "",
            "the start" if from_start else "their committed offsets",
        )
        self._cut_off = True  # so that assigned() starts a new assignment
        self.assigned()
        self._store_assignment.resync(consumer)
        self._cut_off = False
        held = list(consumer.assignment())
        if not from_start or not held:
            return
        if self._settings.auto_offset_reset == "earliest":
            consumer.seek_to_beginning(*held)
        else:
            consumer.seek_to_end(*held)
        try:
            positions = {
                tp: OffsetAndMetadata(
                    consumer.position(tp, timeout_ms=_STORE_COMMIT_TIMEOUT_MS), "", -1
                )
                for tp in held
            }
            consumer.commit(positions, timeout_ms=_STORE_COMMIT_TIMEOUT_MS)
        except KafkaError as exc:  # the next batch's commit overwrites it instead
            log.warning("offsets of the recreated topic not committed yet: %s", exc)

    def finish_in_flight(self) -> None:
        """At stop: let the writer finish the batch it is writing, commit it (consumer
        thread), and no more: the group is left (close_consumer) one write after the signal,
        and the partitions' next owner starts on the batches that were still waiting."""
        writer = self._writer
        if writer is None:
            return
        dropped = writer.discard_waiting()
        if dropped:
            log.info(
                "stopping: %d batches not written, left to the partitions' next owner", dropped
            )
        with contextlib.suppress(queue.Full):
            writer.inbox.put(None, timeout=1)
        writer.join(timeout=60)
        self._writer = None  # close() revokes partitions again: nothing left to wait for
        assignment = self._assignment
        self._commit(writer.take_done(assignment), assignment)

    def commit_done(self, *, blocking: bool = True) -> None:
        if self._writer is not None:
            assignment = self._assignment
            self._commit(self._writer.take_done(assignment), assignment, blocking=blocking)

    def assigned(self) -> None:
        """A new assignment (kafka-python's IO thread). What was stored under an earlier one
        is never committed under this one: a broker that lost its state (the bundled one's
        memory storage) hands offsets 0, 1, ... out again, and a commit of the old positions
        would make the group skip every record the new log holds below them (seen: the 1,089
        events produced during a 4 s outage, with producers that reconnect at once). Those
        batches are read again instead; the store makes that a no-op.
        Only after the broker was seen disconnected, though: a rebalance on a broker that
        stayed up (a peer joined, left or was killed) keeps the log, and what was stored
        before it is committed as usual, or a stream that ends with the rebalance would
        keep its last batches uncommitted, a lag that never reaches 0."""
        with self._uncommitted_lock:
            if self._cut_off:
                self._assignment += 1
                self._uncommitted.clear()
        self.batch_cap = _FIRST_BATCH

    def _commit(self, offsets: Offsets, assignment: int, *, blocking: bool = True) -> None:
        """A failed commit is retried with the next one (every poll, at the latest): at the end
        of a stream no later batch would carry it, and the group's lag would never reach 0
        (seen when a commit met a coordinator change after a member was killed)."""
        consumer = self._consumer
        if consumer is None:
            return
        with self._uncommitted_lock:  # the revoke path runs on kafka-python's IO thread
            if self._assignment != assignment:
                return  # reassigned since `offsets` were taken: the old assignment's
            merged, self._uncommitted = self._uncommitted, {}
        for tp, offset in offsets.items():
            merged[tp] = max(offset, merged.get(tp, offset))
        # A partition that is not ours (any more) is its owner's to commit: ours would be
        # refused, and retried with every later commit.
        owned = consumer.assignment()
        merged = {tp: offset for tp, offset in merged.items() if tp in owned}
        if not merged:
            return
        commits = {tp: OffsetAndMetadata(o, "", -1) for tp, o in merged.items()}
        if self._assignment != assignment:
            return  # reassigned since they were taken: the old assignment's, read again
        try:
            if blocking:
                # Store assignment: a commit still retrying when the broker comes back
                # would land unfenced (see _resync): bounded, it fails and is retried.
                timeout = _STORE_COMMIT_TIMEOUT_MS if self._store_assignment else None
                consumer.commit(commits, timeout_ms=timeout)
            else:
                # On the IO thread, at revoke: not retried; the partitions' next owner gets
                # what was not committed again, and the store turns it into a no-op.
                consumer.commit_async(commits)
            self._metrics.commits.labels(result="ok").inc()
        except (CommitFailedError, KafkaError) as exc:
            self._metrics.commits.labels(result="failed").inc()
            # Refused while the group rebalances (every deploy): expected, and retried with
            # the next commit; logged as a warning it filled the log at every restart.
            expected = isinstance(exc, RebalanceInProgressError)
            log.log(
                logging.DEBUG if expected else logging.WARNING,
                "offset commit failed, retrying with the next one: %s",
                exc,
            )
            if blocking:
                with self._uncommitted_lock:
                    if self._assignment != assignment:
                        return  # reassigned meanwhile: these are the old assignment's
                    for tp, offset in merged.items():
                        self._uncommitted[tp] = max(offset, self._uncommitted.get(tp, offset))

    def forget(self, tp: TopicPartition) -> None:
        """A revoked partition's lag, and its commits, are another member's now."""
        with self._uncommitted_lock:
            self._uncommitted.pop(tp, None)
        self._next.pop(tp, None)
        with contextlib.suppress(KeyError):
            self._metrics.consumer_lag.remove(str(tp.partition))

    def _update_lag(self, consumer: KafkaConsumer, offsets: Offsets) -> None:
        # highwater comes with fetch responses and is right on every broker tried;
        # end_offsets() is wrong on some (see docs/TEST-INFRA), so it is not used.
        self._next.update(offsets)
        for tp, next_offset in self._next.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag = max(highwater - next_offset, 0)
                self._metrics.consumer_lag.labels(partition=str(tp.partition)).set(lag)
