"""The courier of `runwatch run exec`: everything exec says about its run goes out on this
thread, so that nothing the broker does (slow, away, refusing) can hold the command back.

It loads the settings (pydantic, kafka-python: the imports the front leaves out), turns the
supervisor's status notes into status events (the time each happened, not the time it is
sent), keeps each one in the spool (consumers.client.spool) until the broker acknowledges it,
publishes a heartbeat (an empty run-update record: it moves the run's UpdatedTime and
LastSeen, and rules do not see it as an event) every `--heartbeat` seconds while the command
runs, and retries a broker that is away with backoff. When the supervisor is done, it waits
at most `--deliver-timeout` for what is left; the rest stays in the spool. Once its own
records are out, it also sends what earlier execs on this machine left in the spool.

The broker being away is said once, on stderr, and again when it answers; statuses that could
be neither delivered nor kept are reported as lost. Never silently.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from consumers.client.env import Journal
from consumers.client.outcome import Outcome
from consumers.client.request import DEFAULT_WORKSPACE, ExecRequest
from consumers.client.spool import Destination, Leftover, SpoolFile, leftovers

if TYPE_CHECKING:
    from consumers.client.run import Run
    from consumers.config.service import KafkaSettings
    from consumers.config.settings import Settings

HEARTBEAT_PROPERTY = "runwatch.heartbeat_s"  # on runs exec heartbeats for: the interval
SEND_TIMEOUT_S = 5.0  # one record's acknowledgement
CONNECT_S = 2.0  # one attempt to reach a broker
LOOKUP_S = 5.0  # reading a --parent from the store
_BACKOFF = (0.25, 5.0)  # first and longest wait between attempts while the broker is away
_STOP = "stop"  # heartbeats off: the command ended


@dataclass(frozen=True, slots=True)
class Note:
    """A status change the supervisor saw, at the time it happened (time.time())."""

    status: str
    at: float
    message: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    key: bytes
    value: bytes
    status: bool  # a status event or a run's description; False: a heartbeat
    number: int | None  # its spool record; None: not kept on disk


def _say(text: str) -> None:
    from consumers.model.redact import redact

    try:
        sys.stderr.write(f"runwatch: {redact(text)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr to talk to


def connect(kafka: KafkaSettings, timeout_s: float = CONNECT_S) -> Any:
    """A producer that gives up quickly: the caller retries, and no call blocks for long."""
    from consumers.ingest.producer import make_producer

    return make_producer(
        kafka,
        max_block_ms=int(SEND_TIMEOUT_S * 1000),
        bootstrap_timeout_ms=max(int(timeout_s * 1000), 100),
        linger_ms=0,
        # The courier retries, in order, and keeps the spool right; a record sent twice is
        # stored once (natural key) or applied twice to the same effect (run updates).
        retries=0,
        enable_idempotence=False,
    )


def send(producer: Any, topic: str, key: bytes, value: bytes) -> None:
    """One record, acknowledged by the broker when this returns."""
    producer.send(topic, key=key, value=value).get(timeout=SEND_TIMEOUT_S)


def close(producer: Any, timeout: float = 1.0) -> None:
    from consumers.ingest.kafka_clients import close_producer

    close_producer(producer, timeout=timeout)


@dataclass(frozen=True, slots=True)
class Flushed:
    records: int
    files: int
    left: int  # records still in the spool (the broker stopped answering)


def flush_leftovers(
    producer: Any,
    leftover_files: Any,
    *,
    until: Callable[[], bool] = lambda: False,
) -> Flushed:
    """Send what spool files left by earlier execs hold, one file at a time, in order; stop
    at the first failure (or when `until()`), leaving the rest for the next flush."""
    records = files = left = 0
    failed = False
    for leftover in leftover_files:
        assert isinstance(leftover, Leftover)
        try:
            for record in leftover.records:
                if failed or until():
                    left += 1
                    continue
                try:
                    send(producer, leftover.destination.topic, record.key, record.value)
                except Exception:
                    failed = True
                    left += 1
                    continue
                leftover.delivered(record.number)
                records += 1
        finally:
            leftover.release()
        files += 1
    return Flushed(records, files, left)


class Courier:
    def __init__(self, request: ExecRequest) -> None:
        self.request = request
        self._notes: queue.SimpleQueue[Note | Journal | str] = (
            queue.SimpleQueue()
        )  # put() is reentrant
        self._thread = threading.Thread(target=self._main, name="runwatch-courier", daemon=True)
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._outbox: deque[Outgoing] = deque()
        self._run: Run | None = None
        self._settings: Settings | None = None
        self._spool: SpoolFile | None = None
        self._producer: Any = None
        self._beating = False
        self._retry_at = 0.0
        self._backoff = _BACKOFF[0]
        self._warned = False
        self._swept = False
        self.report: str | None = None  # what the supervisor prints at the end, if anything

    # ---- the supervisor's side (main thread, signal handlers) ------------------------
    def note(
        self, status: str, at: float, message: str | None = None, code: str | None = None
    ) -> None:
        self._notes.put(Note(status, at, message, code))

    def start(self) -> None:
        self._thread.start()

    def finish(self, outcome: Outcome | None, at: float, journal: Journal) -> None:
        """The command ended; `outcome` None: it ended its run itself. The journal's labels
        go on the final event (every status event carries the run's tags)."""
        self._notes.put(journal)
        if outcome is not None:
            self.note(outcome.status, at, outcome.message, outcome.error_code)
        self._notes.put(_STOP)

    def drain(self, timeout: float) -> str | None:
        """Wait up to `timeout` for the rest to be delivered; what to tell the user."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        self._notes.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout + SEND_TIMEOUT_S + 1.0)
        if self._thread.is_alive():
            where = self._spool.path if self._spool is not None else self.request.spool
            return (
                f"the broker did not answer in time; what was not delivered about run "
                f"{self.request.run_id} is in {where} (`runwatch run flush` sends it)"
            )
        return self.report

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the courier's thread ---------------------------------------------------------
    def _main(self) -> None:
        try:
            self._setup()
        except Exception as exc:  # a bad config, a broken environment: the command runs on
            _say(
                f"run {self.request.run_id} is not tracked: {exc}. The command runs on; "
                "nothing about it is published"
            )
            return
        try:
            self._loop()
        except Exception as exc:  # a surprise must not take exec's exit code with it
            self.report = f"publishing run {self.request.run_id} failed: {exc!r}"
        finally:
            if self._producer is not None:
                close(self._producer)
            self._end()

    def _setup(self) -> None:
        from consumers.client.run import Experiment, Run
        from consumers.client.workspace import Workspace
        from consumers.config.settings import load_settings
        from consumers.model.errors import RunwatchError

        # What exec has to say it says itself (`_say`); the log lines of the modules it
        # borrows (a producer closed while the broker is away) would only clutter the
        # command's stderr, which is the user's.
        logging.getLogger("consumers").addHandler(logging.NullHandler())
        logging.getLogger("consumers").propagate = False
        request = self.request
        settings = load_settings(request.config)  # the flags are in the environment
        settings.secret_values(strict=False)  # registered for redaction
        self._settings = settings
        ws = Workspace(
            request.workspace or DEFAULT_WORKSPACE, settings, consistency_timeout=LOOKUP_S
        )
        experiment, root = request.experiment, request.root
        if request.parent is not None and (root is None or experiment is None):
            try:
                parent = Run.attach(ws, request.parent)
            except RunwatchError as exc:
                _say(f"parent run {request.parent} not read from the store ({exc})")
                root = root or request.parent
            else:
                if request.workspace is None:
                    ws = parent.workspace
                root = root or parent.root_id or parent.id
                experiment = experiment or parent.experiment.name
        properties = dict(request.properties)
        if request.heartbeat_s > 0:  # what a `since: last_seen` absence rule can select on
            properties.setdefault(HEARTBEAT_PROPERTY, f"{request.heartbeat_s:g}")
        self._run = Run(
            Experiment(ws, experiment or DEFAULT_WORKSPACE),
            request.run_id,
            parent=request.parent,
            root_id=root,
            tags=dict(request.tags),
            properties=properties,
        )
        kafka = settings.kafka
        self.destination = Destination(kafka.bootstrap_servers, kafka.topic)
        name = f"{request.run_id}.{os.getpid()}"
        self._spool = SpoolFile(request.spool, self.destination, name)

    def _loop(self) -> None:
        beat = self.request.heartbeat_s
        next_beat = float("inf")
        while True:
            self._take(block=False)
            now = time.monotonic()
            if self._beating and beat > 0:
                if next_beat == float("inf"):
                    next_beat = now + beat
                elif now >= next_beat:
                    next_beat = now + beat
                    if self._producer is not None and not self._outbox:
                        self._heartbeat()
            self._deliver()
            if not self._outbox and self._producer is not None and not self._swept:
                self._sweep()
            now = time.monotonic()
            if self._closing.is_set():
                # finish() queued the final status before drain() set closing: take it now,
                # or a loop that saw closing between the two would end without it (seen:
                # exec exited 0 and its Completed was neither sent nor kept)
                self._take(block=False)
                if not self._outbox or now >= self._deadline:
                    return
            waits = [1.0]
            if self._beating and beat > 0:
                waits.append(next_beat - now)
            if self._outbox:
                waits.append(self._retry_at - now)
            if self._closing.is_set():
                waits.append(self._deadline - now)
            self._take(block=True, timeout=max(min(waits), 0.005))

    def _take(self, *, block: bool, timeout: float = 0.0) -> None:
        try:
            item = self._notes.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            return
        while True:
            self._accept(item)
            try:
                item = self._notes.get_nowait()
            except queue.Empty:
                return

    def _accept(self, item: Note | Journal | str) -> None:
        if item == _STOP:
            self._beating = False
            return
        run = self._run
        assert run is not None
        if isinstance(item, Journal):
            run._tags, run._properties = item.labels(run._tags, run._properties)
            return
        assert isinstance(item, Note)
        at = datetime.fromtimestamp(item.at, UTC)
        event = run._event(item.status, item.message, item.code, at=at)
        self._queue(event.root_run_id.encode(), _encoded(event), keep=True)
        if item.status == "Running":
            self._beating = True
            if self.request.name:
                update = run._update_record(Description=self.request.name)
                self._queue(update.root_run_id.encode(), update.to_json(), keep=True)
        elif item.status in ("Completed", "Failed", "Canceled"):
            self._beating = False

    def _queue(self, key: bytes, value: bytes, *, keep: bool) -> None:
        number = self._spool.add(key, value) if keep and self._spool is not None else None
        self._outbox.append(Outgoing(key, value, keep, number))

    def _heartbeat(self) -> None:
        assert self._run is not None
        update = self._run._update_record()
        self._queue(update.root_run_id.encode(), update.to_json(), keep=False)

    def _deliver(self) -> None:
        if not self._outbox or time.monotonic() < self._retry_at:
            return
        assert self._settings is not None
        if self._producer is None:
            limit = CONNECT_S
            if self._closing.is_set():
                limit = min(limit, self._deadline - time.monotonic())
            try:
                self._producer = connect(self._settings.kafka, limit)
            except Exception as exc:
                self._trouble(exc)
                return
        topic = self._settings.kafka.topic
        while self._outbox:
            item = self._outbox[0]
            try:
                send(self._producer, topic, item.key, item.value)
            except Exception as exc:
                # A fresh producer next time: one that lost its broker (or its state, to a
                # broker restart) is not worth nursing for a handful of records.
                close(self._producer, timeout=0)
                self._producer = None
                self._trouble(exc)
                return
            self._outbox.popleft()
            if item.number is not None and self._spool is not None:
                self._spool.delivered(item.number)
        self._backoff = _BACKOFF[0]
        if self._warned:
            self._warned = False
            _say(f"the broker answers again: run {self.request.run_id}'s status is delivered")

    def _trouble(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF[1])
        if self._warned:
            return
        self._warned = True
        spool = self._spool
        kept = (
            f"kept in {spool.path} and sent when it answers"
            if spool is not None and spool.problem is None
            else f"NOT kept on disk ({spool.problem if spool else 'no spool'}): it is sent "
            "if the broker answers before exec ends"
        )
        _say(
            f"cannot publish to the broker at {self.destination.bootstrap_servers} "
            f"({type(exc).__name__}: {exc}); the command runs on. "
            f"Run {self.request.run_id}'s status is {kept}"
        )

    def _sweep(self) -> None:
        """Once: send what earlier execs left in the spool for this destination."""
        self._swept = True
        flushed = flush_leftovers(
            self._producer,
            leftovers(self.request.spool, only=self.destination),
            until=lambda: self._closing.is_set() and time.monotonic() >= self._deadline,
        )
        if flushed.records:
            _say(f"sent {flushed.records} status record(s) earlier runs left in the spool")

    def _end(self) -> None:
        spool = self._spool
        if spool is not None:
            spool.close()
        pending = [item for item in self._outbox if item.status]
        kept = sum(1 for item in pending if item.number is not None)
        lost = len(pending) - kept
        lines = []
        if kept:
            where = spool.path if spool is not None else self.request.spool
            lines.append(
                f"{kept} status record(s) of run {self.request.run_id} not delivered (the "
                f"broker did not answer): kept in {where}; `runwatch run flush` sends them, "
                "as does the next `runwatch run exec`"
            )
        if lost:
            problem = spool.problem if spool is not None else "no spool"
            lines.append(
                f"{lost} status record(s) of run {self.request.run_id} LOST: not delivered "
                f"and not kept on disk ({problem})"
            )
        if lines:
            self.report = "\n".join(lines)


def _encoded(event: Any) -> bytes:
    from consumers.ingest.decoding import EventFormat
    from consumers.ingest.encoding import encode

    value: bytes = encode(event, EventFormat.NATIVE)
    return value
