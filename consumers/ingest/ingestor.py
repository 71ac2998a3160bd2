"""One Kafka batch -> decoded events and dead letters -> one store transaction.

The handler the Kafka loop calls. When it returns, the batch is durable (stored, and its dead
letters acknowledged by the broker), so the loop may commit the offsets; when it raises, the
loop commits nothing and the batch comes again.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from consumers.ingest.decoding import INTERNAL, Decoded, decode
from consumers.model.alerts import Alert
from consumers.model.causes import UNKNOWN, CauseTable, classify_event
from consumers.model.errors import DecodeError, StoreError
from consumers.model.events import RunStatusEvent, Status
from consumers.model.limits import DEFAULT_LIMITS, Bounds, IngestLimits, in_parsed_utc
from consumers.model.updates import RunUpdate
from consumers.noise.policy import NoisePolicy
from consumers.outbox.recorder import recording
from consumers.store import Store
from consumers.store.writer import DeadLetter, WriteResult
from consumers.telemetry.metrics import Metrics, observe_many

log = logging.getLogger(__name__)
_TRACEBACKS_PER_TYPE = 1  # an internal error's traceback is logged once per exception type

_NO_CAUSES = CauseTable.of(())
_FAILED = Status.Failed  # no table given: every failure's cause is `unknown`
_CRASH_AFTER_STORE_COMMIT = os.environ.get("RUNWATCH_CHAOS_KILL_AFTER_STORE_COMMIT") == "1"


class Record(Protocol):
    """The part of kafka-python's ConsumerRecord that ingest reads. Its `headers` (a list of
    (str, bytes)) are read too, where present: only a binary-mode CloudEvent needs them."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class DeadLetterSink(Protocol):
    def publish(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    records: Sequence[Record]
    decoded: list[tuple[Record, Decoded]]
    letters: list[DeadLetter]
    alerts: list[Alert]


@dataclass(frozen=True, slots=True)
class IngestResult:
    messages: int
    events: int
    inserted: int
    duplicates: int
    skipped: int
    dead_letters: int


def _letter(record: Record, reason: str, error: str) -> DeadLetter:
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        error=error,
        key=record.key,
        payload=record.value,
        headers=tuple(getattr(record, "headers", None) or ()),
    )


def _classify(result: Decoded, table: CauseTable) -> Decoded:
    """Failed runs get their cause here, before the rules see them (`cause` is a label).
    Per message on the hot path: the common event (not Failed, no cause given) is passed
    over without a call, and nothing is copied unless an event changed."""
    events = result.events
    changed: list[RunStatusEvent] | None = None
    for index, event in enumerate(events):
        if event.Status != _FAILED and event.cause is None and event.cause_detail is None:
            if changed is not None:
                changed.append(event)
            continue
        new = classify_event(table, event)
        if changed is None:
            if new is event:
                continue
            changed = list(events[:index])
        changed.append(new)
    return result if changed is None else result._replace(events=tuple(changed))


class Ingestor:
    def __init__(
        self,
        store: Store,
        sink: DeadLetterSink,
        metrics: Metrics,
        *,
        max_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_stored: Callable[[Sequence[RunStatusEvent]], None] | None = None,
        evaluate: Callable[[RunStatusEvent], Sequence[Alert]] | None = None,
        receiver_kinds: Mapping[str, str] | None = None,
        on_notified: Callable[[], None] | None = None,
        noise: NoisePolicy | None = None,
        limits: IngestLimits = DEFAULT_LIMITS,
        causes: Callable[[], CauseTable] = lambda: _NO_CAUSES,
    ) -> None:
        """`causes` gives the cause table in force (it may be reloaded between batches)."""
        self._store = store
        self._sink = sink
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._clock = clock
        self._on_stored = on_stored
        self._evaluate = evaluate
        self._kinds = dict(receiver_kinds or {})
        self._on_notified = on_notified
        self._noise = noise
        self._limits = limits
        self._causes = causes
        self._traced: Counter[str] = Counter()

    def handle(self, records: Sequence[Record]) -> IngestResult:
        return self.write(self.prepare(records))

    def prepare(self, records: Sequence[Record]) -> Prepared:
        """The CPU-bound half (decoding); the Kafka loop runs it while the previous batch is
        being written. It never raises for what a message holds: each message is decoded in
        its own isolation boundary (`_decode_one`)."""
        bounds = self._limits.at(self._clock())  # the time window, once per batch
        table = self._causes()  # the cause table in force, likewise
        decoded: list[tuple[Record, Decoded]] = []
        letters: list[DeadLetter] = []
        for record in records:
            result, letter = self._decode_one(record, bounds, table)
            if result is not None:
                decoded.append((record, result))
            if letter is not None:
                letters.append(letter)
        return Prepared(records, decoded, letters, self._alerts(decoded))

    def _decode_one(
        self, record: Record, bounds: Bounds, table: CauseTable
    ) -> tuple[Decoded | None, DeadLetter | None]:
        """One message: what it holds, and its dead letter if any of it was refused. Any
        exception here, foreseen or not, is this message's dead letter and never the batch's
        failure (only the store and the broker may fail a batch); decode() has the same
        boundary inside, so this one also covers whatever per-message work comes after it."""
        try:
            headers = getattr(record, "headers", None)  # test doubles may have none
            result = decode(record.value, max_bytes=self._max_bytes, bounds=bounds, headers=headers)
            result = _classify(result, table)
            if result.rejected is None:
                return result, None
            # The good records are stored; the whole message is kept for the bad ones.
            rejected = result.rejected
            return result, _letter(record, rejected.reason, rejected.summary())
        except DecodeError as exc:
            if exc.reason == INTERNAL:
                self._log_internal(record, exc.__cause__ or exc)
            return None, _letter(record, exc.reason, exc.detail)
        except Exception as exc:
            self._log_internal(record, exc)
            return None, _letter(record, INTERNAL, f"{type(exc).__name__}: {exc}"[:500])

    def _log_internal(self, record: Record, exc: BaseException) -> None:
        """A bug, not bad input: the first of each exception type with its traceback, the
        rest in one line (a flood of one poison must not flood the log)."""
        kind = type(exc).__name__
        self._traced[kind] += 1
        log.error(
            "internal error decoding %s/%d@%d (dead-lettered as %s): %s: %s",
            record.topic,
            record.partition,
            record.offset,
            INTERNAL,
            kind,
            exc,
            exc_info=exc if self._traced[kind] <= _TRACEBACKS_PER_TYPE else None,
        )

    def _alerts(self, decoded: list[tuple[Record, Decoded]]) -> list[Alert]:
        if self._evaluate is None:
            return []
        started = time.perf_counter()
        alerts = [
            alert
            for _, result in decoded
            for event in result.events
            for alert in self._evaluate(event)
        ]
        self._metrics.rule_evaluation.observe(time.perf_counter() - started)
        return alerts

    def write(self, prepared: Prepared) -> IngestResult:
        """The durable half: when it returns, the batch's offsets may be committed."""
        records, decoded, letters = prepared.records, prepared.decoded, list(prepared.letters)
        alerts = prepared.alerts
        events: list[RunStatusEvent] = []
        updates: list[tuple[int, RunUpdate]] = []  # (events before it, update): topic order
        for _, result in decoded:
            updates.extend((len(events), update) for update in result.updates)
            events.extend(result.events)
        started = time.perf_counter()
        try:
            written = self._store.write_batch(
                events,
                letters,
                record=recording(alerts, self._kinds, self._noise),
                now=self._clock(),
                updates=updates,
            )
        except StoreError as exc:
            if exc.retriable:
                raise
            written, events, letters = self._isolate(decoded, letters, alerts, exc)
        self._metrics.store_write.observe(time.perf_counter() - started)
        if _CRASH_AFTER_STORE_COMMIT:
            # Chaos switch for the tests: die between the store commit and the offset commit.
            os.kill(os.getpid(), signal.SIGKILL)
        if written.notifications and self._on_notified is not None:
            self._on_notified()  # the dispatcher sends now, not at its next poll
        self._sink.publish(letters)
        if self._on_stored is not None and events:
            self._on_stored(events)
        for alert in alerts:
            self._metrics.alerts.labels(rule=alert.rule, severity=str(alert.severity)).inc()
        self._count(records, decoded, letters, written)
        return IngestResult(
            messages=len(records),
            events=len(events),
            inserted=written.inserted,
            duplicates=written.duplicates,
            skipped=sum(result.skipped for _, result in decoded),
            dead_letters=len(letters),
        )

    def _isolate(
        self,
        decoded: list[tuple[Record, Decoded]],
        letters: list[DeadLetter],
        alerts: list[Alert],
        exc: StoreError,
    ) -> tuple[WriteResult, list[RunStatusEvent], list[DeadLetter]]:
        """The database refused the batch for what is in it (not for being down): write
        message by message, dead-lettering only those it refuses, so one odd value can
        never block a partition."""
        log.warning("store refused a batch (%s); writing message by message", exc)
        totals: Counter[str] = Counter()
        kept: list[RunStatusEvent] = []
        now = self._clock()
        for record, result in decoded:
            mine = [a for a in alerts if any(a.event is e for e in result.events)]
            try:
                one = self._store.write_batch(
                    result.events,
                    record=recording(mine, self._kinds, self._noise),
                    now=now,
                    updates=[(0, update) for update in result.updates],
                )
            except StoreError as one_exc:
                if one_exc.retriable:
                    raise
                letters.append(_letter(record, "store_rejected", str(one_exc)[:4000]))
                continue
            kept.extend(result.events)
            totals.update(
                inserted=one.inserted,
                duplicates=one.duplicates,
                runs=one.runs,
                notifications=one.notifications,
                updates=one.updates,
            )
        stored_letters = self._store.write_batch([], letters, now=now)
        summary = WriteResult(
            inserted=totals["inserted"],
            duplicates=totals["duplicates"],
            runs=totals["runs"],
            dead_letters=stored_letters.dead_letters,
            notifications=totals["notifications"],
            updates=totals["updates"],
        )
        return summary, kept, letters

    def _count(
        self,
        records: Sequence[Record],
        decoded: list[tuple[Record, Decoded]],
        letters: list[DeadLetter],
        written: WriteResult,
    ) -> None:
        metrics = self._metrics
        metrics.batch_size.observe(len(records))
        by_key: Counter[tuple[str, str]] = Counter()
        skipped: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        causes: Counter[str] = Counter()
        now = in_parsed_utc(self._clock())  # the events' tzinfo: a cheap subtraction each
        times: list[datetime] = []
        for _, result in decoded:
            kind = result.format
            if result.skipped:
                skipped[kind] += result.skipped
            for event in result.events:
                state = event.Status
                by_key[(kind, state)] += 1
                times.append(event.TimeGenerated)
                if state == _FAILED:
                    failures[event.ExperimentName or ""] += 1
                    causes[event.cause or UNKNOWN] += 1
        observe_many(metrics.ingest_delay, [max((now - t).total_seconds(), 0.0) for t in times])
        for (fmt, status), count in by_key.items():
            metrics.events.labels(format=fmt, status=status).inc(count)
        for experiment, count in failures.items():
            label = metrics.experiment_label(experiment)
            metrics.run_failures.labels(experiment=label).inc(count)
        for cause, count in causes.items():
            metrics.run_failure_causes.labels(cause=cause).inc(count)
        for fmt, count in skipped.items():
            metrics.skipped.labels(format=fmt).inc(count)
        for letter in letters:
            metrics.dead_letters.labels(reason=letter.reason).inc()
        if written.duplicates:
            metrics.duplicates.inc(written.duplicates)
        if written.updates:
            metrics.run_updates.inc(written.updates)


def describe(result: IngestResult) -> dict[str, Any]:
    """Fields for a structured log line."""
    return {
        "messages": result.messages,
        "events": result.events,
        "inserted": result.inserted,
        "duplicates": result.duplicates,
        "skipped": result.skipped,
        "dead_letters": result.dead_letters,
    }
