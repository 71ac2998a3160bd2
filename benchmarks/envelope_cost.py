"""What one hostile envelope costs: a ~1 MB resource-log message of one good record and as many
`{}` as fit (issue 12, case 5).

1. In-process, one envelope through `Ingestor.prepare`: CPU time (best of 3), peak traced
   memory while it is decoded, and memory still held by the prepared batch afterwards (what
   waits in the writer's queue until the batch is stored).
2. `runwatch serve` as its own process against the bundled broker: N such envelopes spread
   over P partitions, then one valid event per partition; time until those are stored and the
   dead letters recorded, and the process's peak RSS (VmHWM), beside the same run without
   envelopes (start-up, group join, baseline RSS).

    python benchmarks/envelope_cost.py [--messages 96] [--partitions 8] [--bootstrap H:P]
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from consumers.config.service import KafkaSettings, MetricsSettings, StoreSettings
from consumers.config.settings import Settings
from consumers.demo.broker import EmbeddedBroker, create_topics
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.ingest.ingestor import Ingestor
from consumers.model.events import RunStatusEvent
from consumers.store.writer import DeadLetter
from consumers.telemetry.metrics import Metrics

RUNWATCH = str(Path(sys.executable).parent / "runwatch")
SIZE = 1_048_000  # under Kafka's default 1 MiB message limit and runwatch's max_message_bytes


def event(run_id: str, status: str = "Running") -> RunStatusEvent:
    return RunStatusEvent(
        TimeGenerated=datetime.now(UTC), RunId=run_id, Status=status, ExperimentName="exp"
    )


def envelope(run_id: str) -> bytes:
    """One good run-status record, then `{}` records up to SIZE bytes."""
    good = orjson.loads(encode(event(run_id), EventFormat.RESOURCE_LOG))["records"][0]
    head = orjson.dumps({"records": [good]})[:-2]
    empties = (SIZE - len(head) - 3) // 3
    return head + b"," + b",".join([b"{}"] * empties) + b"]}"


class _Record:
    def __init__(self, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "t", 0, 0, None, value


class _Sink:
    def publish(self, letters: Sequence[DeadLetter]) -> None:
        pass


def in_process(value: bytes) -> None:
    ingestor = Ingestor(None, _Sink(), Metrics(CollectorRegistry()), max_bytes=2 * SIZE)  # type: ignore[arg-type]
    cpu = []
    for _ in range(3):
        gc.collect()
        started = time.process_time()
        prepared = ingestor.prepare([_Record(value)])
        cpu.append(time.process_time() - started)
        del prepared
    gc.collect()
    tracemalloc.start()
    prepared = ingestor.prepare([_Record(value)])
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    letters = [(letter.reason, len(letter.error)) for letter in prepared.letters]
    stored = sum(len(result.events) for _, result in prepared.decoded)
    print(
        f"one {len(value):,}-byte envelope, in process: CPU {min(cpu) * 1000:.0f} ms (best of 3), "
        f"peak traced {peak / 1e6:.1f} MB, held by the prepared batch {held / 1e6:.2f} MB"
    )
    print(f"  events kept {stored}, dead letters (reason, error chars) {letters}")


def _count(db: Path, table: str) -> int:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return int(conn.execute(f"select count(*) from {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def against_serve(
    bootstrap: str, messages: int, partitions: int, work: Path
) -> tuple[float, int] | None:
    """Seconds from start until everything is stored, and peak RSS; None if serve died."""
    suffix = uuid.uuid4().hex[:6]
    topic, dead = f"env-{suffix}", f"env-dead-{suffix}"
    create_topics(bootstrap, {topic: partitions, dead: 1})
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024
    )
    for index in range(messages):
        producer.send(topic, value=envelope(f"env-{index}"), partition=index % partitions)
    for partition in range(partitions):
        producer.send(
            topic,
            value=encode(event(f"after-{partition}"), EventFormat.NATIVE),
            partition=partition,
        )
    producer.flush()
    producer.close()

    db = work / "serve.db"
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            topic=topic,
            dead_letter_topic=dead,
            group_id=f"env-{suffix}",
            session_timeout_ms=2000,
            heartbeat_interval_ms=300,
            max_message_bytes=2 * SIZE,
        ),
        store=StoreSettings(url=f"sqlite:///{db}"),
        metrics=MetricsSettings(listen="127.0.0.1:0"),
    )
    config = work / "runwatch.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    log = (work / "serve.log").open("ab")
    process = subprocess.Popen(
        [RUNWATCH, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    started = time.monotonic()
    peak_rss = 0
    try:
        while time.monotonic() - started < 600:
            if process.poll() is not None:
                print(f"  serve exited with {process.returncode}; see {work / 'serve.log'}")
                return None
            peak_rss = max(peak_rss, _vm(process.pid, "VmRSS"))
            after = _count(db, "events where \"RunId\" like 'after-%'")
            if after == partitions and _count(db, "dead_letters") >= messages:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        hwm = _vm(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
    rss = max(hwm, peak_rss)
    print(
        f"serve, {messages} envelopes + {partitions} valid events on {partitions} partitions: "
        f"{elapsed:.1f}s from start, peak RSS {rss / 1e6:.0f} MB; events stored "
        f"{_count(db, 'events')}, dead letters {_count(db, 'dead_letters')}"
    )
    return elapsed, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=96)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--bootstrap", help="an existing broker; default: the bundled one")
    args = parser.parse_args()
    in_process(envelope("one"))
    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap: Any = args.bootstrap or (broker.bootstrap if broker else "")
    try:
        # First the same with no envelope: start-up, group join and the baseline RSS.
        base = against_serve(bootstrap, 0, args.partitions, Path(tempfile.mkdtemp()))
        run = against_serve(bootstrap, args.messages, args.partitions, Path(tempfile.mkdtemp()))
        if base is not None and run is not None:
            seconds = max(run[0] - base[0], 1e-3)
            print(
                f"the envelopes: {args.messages / seconds:.1f} msg/s beyond start-up, "
                f"RSS +{(run[1] - base[1]) / 1e6:.0f} MB over serve with none"
            )
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
