"""The chaos harness shared by tests/test_chaos.py (small sizes) and benchmarks/chaos.py (the
issue's sizes): a supervised `runwatch serve` process, a steady producer of run events with a
share of failures (and poison interleaved), and what a user would check afterwards (rows in
the store, mails received, dead letters).

Every event is its own run, so every Failed event raises exactly one mail with its own
Message-ID: a Message-ID received twice is a duplicate send, a failed run with no mail a
missing one.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from kafka import KafkaConsumer, KafkaProducer

from consumers.model.events import RunStatusEvent
from tests.poison import POISON

RUNWATCH = str(Path(sys.executable).parent / "runwatch")
RULES = """
rules:
  - name: chaos-failed
    when: {status: [Failed]}
    severity: 1
    notify: [oncall]
"""


def chaos_config(
    folder: Path,
    *,
    bootstrap: str,
    topic: str,
    dead_letter_topic: str,
    group_id: str,
    smtp_port: int,
    lease_s: float = 60.0,
    backoff_initial_s: float = 0.2,
    backoff_max_s: float = 300.0,
    max_message_bytes: int | None = None,
    rules: str = RULES,
    kafka_settings: dict[str, Any] | None = None,
) -> Path:
    """runwatch.yaml (and a rules folder) for one chaos run in `folder`: SQLite store, one
    rule mailing every Failed event to one receiver."""
    (folder / "rules").mkdir(parents=True, exist_ok=True)
    (folder / "rules" / "chaos.yaml").write_text(rules)
    kafka: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic": topic,
        "dead_letter_topic": dead_letter_topic,
        "group_id": group_id,
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 300,
    }
    if max_message_bytes is not None:
        kafka["max_message_bytes"] = max_message_bytes
    kafka.update(kafka_settings or {})
    config = {
        "kafka": kafka,
        "store": {"url": f"sqlite:///{folder / 'runwatch.db'}"},
        "metrics": {"listen": "127.0.0.1:0"},
        "rules_dir": str(folder / "rules"),
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "runwatch <rw@example.com>"},
        "receivers": {"oncall": {"email": {"to": ["oncall@example.com"]}}},
        "notify": {
            "lease_s": lease_s,
            "backoff_initial_s": backoff_initial_s,
            "backoff_max_s": backoff_max_s,
        },
        "evaluation": {"enabled": False},
    }
    path = folder / "runwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory this process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Serve:
    """A supervised `runwatch serve`. `kill()` is a SIGKILL and a restart (counted in
    `kills`); `check()` restarts a process that exited on its own (counted in `crashes`:
    the restarts an operator would have needed). Peak RSS is sampled by `check()`."""

    config: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    kills: int = 0
    crashes: int = 0
    peak_rss_kib: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.config.parent / "serve.log"

    def start(self) -> Serve:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [RUNWATCH, "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def check(self) -> None:
        process = self.process
        assert process is not None
        self.peak_rss_kib = max(self.peak_rss_kib, _peak_rss_kib(process.pid))
        if process.poll() is not None:
            self.crashes += 1
            self.start()

    def kill(self) -> None:
        process = self.process
        assert process is not None
        self.peak_rss_kib = max(self.peak_rss_kib, _peak_rss_kib(process.pid))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self.kills += 1
        self.start()

    def expect(
        self,
        predicate: Callable[[], object],
        timeout: float,
        what: str,
        *,
        progress: Callable[[], object] | None = None,
        stall_s: float = 15.0,
    ) -> None:
        """Wait for `predicate`; fail at once if the process exits on its own (a test must
        not sit out its timeout in a crash loop), when `progress` (say, rows stored) has not
        changed for `stall_s`, or after `timeout`; with the log's tail."""
        deadline = time.monotonic() + timeout
        last, moved = None, time.monotonic()
        while True:
            self.check()
            if self.crashes:
                raise AssertionError(f"serve exited on its own ({what}):\n{self.tail()}")
            if predicate():
                return
            now = time.monotonic()
            if progress is not None and (current := progress()) != last:
                last, moved = current, now
            elif progress is not None and now - moved > stall_s:
                raise AssertionError(
                    f"{what}: stalled for {stall_s:.0f}s at {current!r}\n{self.tail()}"
                )
            if now > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f}s\n{self.tail()}")
            time.sleep(0.1)

    def wait(self, seconds: float) -> None:
        """Sleep, restarting the process if it exits meanwhile (see check)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check()
            time.sleep(min(left, 0.1))

    def stop(self) -> int:
        """SIGTERM; the exit code (0: a clean stop)."""
        process = self.process
        if process is None:
            return 0
        self.check()
        process = self.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -signal.SIGKILL

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


# About 1 KB of tags, as a real training run carries (hyperparameters, git commit, owner).
TAGS = {f"hparam_{i:02d}": f"value-{i:02d}-" + "x" * 24 for i in range(24)}


def run_event(index: int, failed: bool, prefix: str = "chaos") -> RunStatusEvent:
    return RunStatusEvent(
        TimeGenerated=datetime.now(UTC),
        RunId=f"{prefix}-{index}",
        Status="Failed" if failed else "Running",
        ExperimentName="chaos",
        Message="CUDA out of memory" if failed else None,
        Tags=TAGS,
    )


class SteadyProducer(threading.Thread):
    """`events` run events at `rate` per second, every `failure_every`-th one Failed; after
    every valid event, `poison_per_event` poison messages on average, taken from `poison` in
    order (each sent once; `poison_sent` says how many were). Keeps producing through a
    broker outage: kafka-python buffers and retries."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        events: int,
        rate: float,
        failure_every: int = 10,
        poison: Sequence[bytes] = (),
        poison_per_event: float = 0.0,
        prefix: str = "chaos",
        linger_ms: int = 5,
    ) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self._linger_ms = linger_ms
        self._servers, self._topic = bootstrap, topic
        self._events, self._rate, self._every = events, rate, failure_every
        self._poison, self._poison_per_event = list(poison), poison_per_event
        self._prefix = prefix
        self.produced = 0  # valid events handed to the producer
        self.failed: list[str] = []  # run ids of the Failed ones
        self.poison_sent = 0
        self._poison_futures: list[Any] = []
        self.keys: list[tuple[str, str]] = []  # (RunId, Status) of every valid event
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.paused = threading.Event()  # set: hold on (the rate's clock restarts after)
        self._acked: list[float] = []  # monotonic time of every acknowledgement
        self.send_errors: list[tuple[str, BaseException]] = []  # (key, why) never acknowledged

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:
            self.error = exc

    def _produce(self) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self._servers,
            acks="all",
            # a broker that lost its state does not know the producer id: not idempotent
            enable_idempotence=False,
            linger_ms=self._linger_ms,
            retries=2**31 - 1,
            delivery_timeout_ms=600_000,
            max_block_ms=600_000,
            max_request_size=8 * 1024 * 1024,
            # kafka-python's reconnect backoff (up to 30 s) is kept: after a 15 s outage what
            # this producer buffered reaches the broker 9-12 s after it is back, well after
            # the topics are created again. A producer that reconnects at once races that
            # (the memory broker auto-creates the topic and can fail a produce meanwhile), so
            # the time to resume is measured with an `OutageBurst` instead.
        )
        begin = time.perf_counter()
        for index in range(self._events):
            if self.stopping.is_set():
                break
            if self.paused.is_set():
                while self.paused.is_set() and not self.stopping.is_set():
                    time.sleep(0.01)
                begin = time.perf_counter() - index / self._rate
            due = begin + index / self._rate
            while (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)
            failed = index % self._every == self._every - 1
            event = run_event(index, failed, self._prefix)
            producer.send(
                self._topic, key=event.RunId.encode(), value=event.to_json()
            ).add_callback(self._on_ack).add_errback(self._on_error, event.RunId)
            self.keys.append((event.RunId, event.Status))
            if failed:
                self.failed.append(event.RunId)
            self.produced += 1
            due = min(int((index + 1) * self._poison_per_event + 1e-9), len(self._poison))
            while self.poison_sent < due:
                key = f"poison-{self.poison_sent}".encode()
                future = producer.send(self._topic, key=key, value=self._poison[self.poison_sent])
                future.add_callback(self._on_ack)
                self._poison_futures.append(future)
                self.poison_sent += 1
        if self.stopping.is_set():  # told to stop: what is still buffered may go
            producer.close(timeout=5)
        else:
            producer.flush()
            producer.close()

    def _on_ack(self, _metadata: object) -> None:
        self._acked.append(time.monotonic())  # on the producer's IO thread

    def _on_error(self, key: str, exc: BaseException) -> None:
        self.send_errors.append((key, exc))

    def first_ack_after(self, moment: float) -> float:
        """When the broker first acknowledged a record after `moment` (monotonic; inf if
        never): after an outage, when the buffered stream was back on the topic."""
        return min((at for at in list(self._acked) if at >= moment), default=float("inf"))

    def poison_places(self) -> set[tuple[int, int]]:
        """(partition, offset) of every poison message the broker acknowledged. A broker that
        lost its state hands out offsets again, and a dead letter is one per source offset:
        two poison messages at one place are one letter in the store."""
        places = set()
        for future in self._poison_futures:
            if future.is_done and future.succeeded():
                meta = future.value
                places.add((meta.partition, meta.offset))
        return places


@dataclass
class OutageBurst:
    """Sent by a fresh producer as soon as the topics are created again after a broker
    outage: a poison message first (its dead letter is the first thing published after the
    outage), then `events` run events. Ingest has resumed when the first is stored. They are
    on the topic before `serve` has joined the group again, at offsets from 0 (the broker
    lost its state): below, and with enough events past, the offsets it had reached."""

    keys: list[tuple[str, str]]
    poison_places: set[tuple[int, int]]
    acked_at: float  # monotonic, when the broker had all of it

    @classmethod
    def send(cls, bootstrap: str, topic: str, events: int = 20) -> OutageBurst:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
        )
        try:
            poison = producer.send(topic, key=b"burst-poison", value=b"")
            keys, futures = [], []
            for index in range(events):
                event = run_event(index, failed=False, prefix="burst")
                futures.append(
                    producer.send(topic, key=event.RunId.encode(), value=event.to_json())
                )
                keys.append((event.RunId, event.Status))
            meta = poison.get(timeout=30)
            for future in futures:
                future.get(timeout=30)
            return cls(keys, {(meta.partition, meta.offset)}, time.monotonic())
        finally:
            producer.close(timeout=5)


def sql_count(db: Path, query: str, *params: object) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute(query, params).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def stored_keys(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db, timeout=30) as conn:
        rows = conn.execute('select "RunId", "Status" from events').fetchall()
    return [(str(r), str(s)) for r, s in rows]


def outbox_states(db: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            rows = conn.execute("select state, count(*) from notifications group by state")
            return {str(state): int(count) for state, count in rows}
    except sqlite3.OperationalError:
        return {}


def dead_letter_reasons(db: Path) -> Counter[str]:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            rows = conn.execute("select reason, count(*) from dead_letters group by reason")
            return Counter({str(reason): int(count) for reason, count in rows})
    except sqlite3.OperationalError:
        return Counter()


_SUBJECT_RUN = re.compile(r"Failed: (\S+) in chaos")


@dataclass(frozen=True)
class MailTally:
    """What the SMTP server received for the failed runs."""

    received: int
    missing: int  # failed runs with no mail
    duplicates: int  # mails whose Message-ID had been received before

    @classmethod
    def of(cls, failed_runs: Sequence[str], mails: Sequence[tuple[str, str]]) -> MailTally:
        """`mails`: (Message-ID, Subject) of every mail received."""
        counts = Counter(message_id for message_id, _ in mails)
        mailed = {m.group(1) for _, subject in mails if (m := _SUBJECT_RUN.search(subject))}
        return cls(
            received=len(mails),
            missing=sum(1 for run in failed_runs if run not in mailed),
            duplicates=sum(count - 1 for count in counts.values()),
        )


def wait_until(predicate: Callable[[], object], timeout: float, tick: Callable[[], None]) -> bool:
    """Like tests.conftest.wait_for, calling `tick` (e.g. Serve.check) between tries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick()
        if predicate():
            return True
        time.sleep(0.1)
    return False


# -- poison ---------------------------------------------------------------------------------


def _native(**fields: Any) -> bytes:
    event = {
        "TimeGenerated": datetime.now(UTC).isoformat(),
        "RunId": "poison-run",
        "Status": "Running",
        "ExperimentName": "poison",
        **fields,
    }
    return orjson.dumps(event)


def _deeply_nested_tags(depth: int) -> bytes:
    """Issue 12 case 2: a tag value nested `depth` levels (orjson refuses to write it)."""
    head = _native()[:-1]
    return head + b',"Tags":{"deep":' + b'{"d":' * depth + b'"bottom"' + b"}" * depth + b"}}"


def _record(run_id: str) -> dict[str, Any]:
    return {
        "time": datetime.now(UTC).isoformat(),
        "category": "AmlRunStatusChangedEvent",
        "level": "Informational",
        "properties": {"RunId": run_id, "Status": "Running", "ExperimentName": "poison"},
    }


def _envelope_of_empty_objects(size: int) -> bytes:
    """Issue 12 case 5: one good record and `{}` up to `size` bytes."""
    head = orjson.dumps({"records": [_record("poison-envelope")]})[:-2]
    count = (size - len(head) - 2) // 3
    return head + b",{}" * count + b"]}"


def _over(limit: int) -> bytes:
    """A valid envelope just over `limit` bytes: too_large."""
    records: list[dict[str, Any]] = []
    chunk = _record("poison-oversized") | {"resultDescription": "x" * 4000}
    while len(value := orjson.dumps({"records": records})) <= limit:
        records.append(chunk)
    return value


@dataclass(frozen=True)
class PoisonKind:
    """One kind of message that must never stop `serve`. `reason`: the dead-letter reason
    expected in the store (None: any reason; "" for `stored`: no dead letter at all);
    `stored`: run ids of events in it that must be stored (a valid event that trips a rule).
    `weight`: how often it comes relative to the others (the large ones are rarer)."""

    name: str
    value: bytes
    reason: str | None
    stored: tuple[str, ...] = ()
    weight: float = 1.0
    needs: str = ""  # the fix it needs, while that is not on this branch


# A rule whose `where:` overflows on a valid event (issue 12 case 3).
OVERFLOW_RULE = """
  - name: chaos-loss-overflow
    when:
      status: [Running]
      where: "floor(to_number(properties.loss)) > `5`"
    notify: [oncall]
"""

NEEDS_INGEST = "time sanity and shape limits (issue 12 items 1-3) from branch i12-ingest"
NEEDS_RULES = "rule evaluation isolation (issue 12 item 1) from branch i12-rules"
NEEDS_KAFKA = "a dead-letter path that cannot block (issue 12 item 4) from branch i12-kafka"


def poison_kinds(max_message_bytes: int = 1_048_576) -> list[PoisonKind]:
    """tests/poison.py (but its `oversized`, sized for a 64 KiB limit) and the kinds issue 12
    found: at least 14 kinds in all (37)."""
    kinds = [PoisonKind(name, value, reason) for name, value, reason in POISON]
    kinds = [kind for kind in kinds if kind.name != "oversized"]
    kinds += [
        PoisonKind("too_large", _over(max_message_bytes), "too_large", weight=0.1),
        PoisonKind(
            "envelope_of_empty_objects",
            _envelope_of_empty_objects(1_000_000),
            None,
            weight=0.1,
        ),
        PoisonKind(
            "time_before_year_1",
            _native(TimeGenerated="0001-01-01T00:00:00+01:00"),
            "time_out_of_range",
            needs=NEEDS_INGEST,
        ),
        PoisonKind(
            "time_after_year_9999",
            _native(TimeGenerated="9999-12-31T23:59:59-01:00"),
            "time_out_of_range",
            needs=NEEDS_INGEST,
        ),
        PoisonKind(
            "time_far_future",
            _native(TimeGenerated="9999-12-31T00:00:00Z", Status="Completed"),
            "time_out_of_range",
            needs=NEEDS_INGEST,
        ),
        PoisonKind("deep_nesting", _deeply_nested_tags(300), None, needs=NEEDS_INGEST),
        PoisonKind(
            "where_overflow",
            _native(RunId="poison-loss", Properties={"loss": "1e999"}),
            "",
            stored=("poison-loss",),
            needs=NEEDS_RULES,
        ),
        PoisonKind("message_3mb", b"x" * 3_000_000, "too_large", weight=0.1, needs=NEEDS_KAFKA),
    ]
    return kinds


def poison_schedule(kinds: Sequence[PoisonKind], count: int) -> list[int]:
    """`count` indexes into `kinds`, each kind in proportion to its weight (at least once),
    spread evenly: what SteadyProducer interleaves with the valid events."""
    total = sum(kind.weight for kind in kinds)
    copies = [max(1, round(count * kind.weight / total)) for kind in kinds]
    order = sorted(((index + 0.5) / n, k) for k, n in enumerate(copies) for index in range(n))
    return [k for _, k in order]


def dead_letter_topic_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    """Messages on the dead-letter topic (read from the start, no group)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    seen = 0
    idle_until = time.monotonic() + timeout
    try:
        while time.monotonic() < idle_until:
            got = sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
            if got:
                seen += got
                idle_until = time.monotonic() + 2.0
    finally:
        consumer.close()
    return seen


def collect_refused_sockets() -> None:
    """kafka-python keeps the sockets of connection attempts a stopped broker refused
    (never connected, bound to 0.0.0.0) referenced from frames that outlive the test (a
    failure's traceback); closed here, rather than warned about as unclosed at the end of
    the session. Listening and connected sockets are left alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
        for item in gc.get_objects():
            if not isinstance(item, socket.socket) or item.fileno() == -1:
                continue
            try:
                if item.family != socket.AF_INET or item.getsockname()[0] != "0.0.0.0":
                    continue
                item.getpeername()
            except OSError:  # not connected: a refused attempt
                item.close()
