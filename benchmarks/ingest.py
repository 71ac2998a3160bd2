"""Ingest benchmark: runwatch Kafka -> SQLite against a bare kafka-python loop, same run.

1. Produce N events (mixed formats) to a fresh topic.
2. Bare: a kafka-python consumer reading every message (the ceiling).
3. runwatch: KafkaLoop + Ingestor + SQLite store, offsets committed after each batch.
4. Latency: a separate process produces a steady rate; produce -> row committed, percentiles,
   beside the floor: the same producer into a bare consumer that only parses, same run.

Both throughput loops run with the benchmark's own data freed, the collector and the GIL's
switch interval tuned as `runwatch serve` tunes them (consumers.service.app.tune_interpreter),
so neither pays for the other's heap.

    python benchmarks/ingest.py [--events 200000] [--rate 1000] [--seconds 30] [--bootstrap H:P]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from percentiles import pct  # benchmarks/, on the path when run as a script
from prometheus_client import CollectorRegistry

from consumers.config.service import KafkaSettings
from consumers.demo.broker import EmbeddedBroker, create_topics
from consumers.demo.simulator import Simulator
from consumers.ingest.decoding import EventFormat, decode
from consumers.ingest.encoding import encode, encode_many
from consumers.ingest.ingestor import Ingestor, Prepared
from consumers.ingest.kafka_loop import KafkaLoop
from consumers.model.events import RunStatusEvent
from consumers.model.limits import DEFAULT_LIMITS
from consumers.service.app import tune_interpreter
from consumers.store import open_store
from consumers.store.writer import DeadLetter
from consumers.telemetry.metrics import Metrics

PARTITIONS = 4
# The steady test's topic: the bundled broker's fetch time grows with a partition's length,
# and 30,000 events on 4 partitions measured the broker more than the consumer.
STEADY_PARTITIONS = 16


class _NoDeadLetters:
    def publish(self, letters: Sequence[DeadLetter]) -> None:
        if letters:
            raise RuntimeError(f"benchmark data produced {len(letters)} dead letters")


def messages_for(events: list[RunStatusEvent], seed: int = 1) -> list[tuple[bytes, bytes]]:
    """Mostly native, then Event Grid, CloudEvents, single resource-log records, and
    resource-log envelopes of 10 records, as a real mixed topic would carry."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    index = 0
    while index < len(events):
        roll = rng.random()
        key = events[index].root_run_id.encode()
        if roll < 0.02 and index + 10 <= len(events):
            out.append((key, encode_many(events[index : index + 10], EventFormat.RESOURCE_LOG)))
            index += 10
            continue
        fmt = (
            EventFormat.NATIVE
            if roll < 0.70
            else EventFormat.EVENT_GRID
            if roll < 0.80
            else EventFormat.CLOUDEVENTS
            if roll < 0.90
            else EventFormat.RESOURCE_LOG
        )
        out.append((key, encode(events[index], fmt)))
        index += 1
    return out


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=256 * 1024
    )
    started = time.perf_counter()
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def bare_consume(bootstrap: str, topic: str, expected: int) -> tuple[float, int]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_wait_ms=10,
    )
    seen = size = 0
    started = None
    while seen < expected:
        for batch in consumer.poll(timeout_ms=200).values():
            if started is None:
                started = time.perf_counter()
            for record in batch:
                size += len(record.value)
            seen += len(batch)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return elapsed, size


def runwatch_ingest(settings: KafkaSettings, db: Path, expected: int) -> tuple[float, int]:
    store = open_store(f"sqlite:///{db}", migrate=True)
    metrics = Metrics(CollectorRegistry())
    ingestor = Ingestor(store, _NoDeadLetters(), metrics, max_bytes=settings.max_message_bytes)
    stop = threading.Event()
    seen = 0
    started: float | None = None

    def prepare(records: Sequence[Any]) -> Prepared:
        nonlocal started
        if started is None:
            started = time.perf_counter()
        return ingestor.prepare(records)

    def write(prepared: Prepared) -> None:
        nonlocal seen
        ingestor.write(prepared)
        seen += len(prepared.records)
        if seen >= expected:
            stop.set()

    loop = KafkaLoop(settings, prepare, write, metrics)
    loop.run(stop)  # commits the last batch before returning
    elapsed = time.perf_counter() - (started or time.perf_counter())
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("select count(*) from events").scalar_one()
    store.dispose()
    return elapsed, int(rows)


def steady_producer(bootstrap: str, topic: str, rate: float, seconds: float) -> None:
    """A separate process, so the producer does not share the consumer's GIL."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    simulator = Simulator(seed=7)
    events = simulator.events(int(rate * seconds) + 10)
    begin = time.perf_counter()
    for sent, template in enumerate(events):
        due = begin + sent / rate
        while (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        if sent >= rate * seconds:
            break
        event = template.model_copy(update={"TimeGenerated": datetime.now(UTC)})
        producer.send(topic, key=event.root_run_id.encode(), value=event.to_json())
    producer.flush()
    producer.close()


def bare_latency(settings: KafkaSettings, rate: float, seconds: float) -> list[float]:
    """The floor: the same producer into a bare kafka-python consumer that only parses."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    consumer.assign([TopicPartition(settings.topic, i) for i in range(STEADY_PARTITIONS)])
    consumer.poll(timeout_ms=500)
    producer = multiprocessing.get_context("spawn").Process(
        target=steady_producer, args=(settings.bootstrap_servers, settings.topic, rate, seconds)
    )
    producer.start()
    delays: list[float] = []
    deadline = time.monotonic() + seconds + 15
    while len(delays) < rate * seconds and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=100).values():
            now = datetime.now(UTC)
            for record in batch:
                sent = datetime.fromisoformat(orjson.loads(record.value)["TimeGenerated"])
                delays.append((now - sent).total_seconds())
    producer.join()
    consumer.close()
    return delays


def latency(settings: KafkaSettings, db: Path, rate: float, seconds: float) -> list[float]:
    store = open_store(f"sqlite:///{db}", migrate=True)
    metrics = Metrics(CollectorRegistry())
    delays: list[float] = []

    def stored(events: Sequence[RunStatusEvent]) -> None:
        now = datetime.now(UTC)
        delays.extend((now - e.TimeGenerated).total_seconds() for e in events)

    ingestor = Ingestor(
        store, _NoDeadLetters(), metrics, max_bytes=settings.max_message_bytes, on_stored=stored
    )
    stop = threading.Event()
    loop = KafkaLoop(settings, ingestor.prepare, ingestor.write, metrics)
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    time.sleep(3)  # let the consumer join the group before the clock starts
    producer = multiprocessing.get_context("spawn").Process(
        target=steady_producer, args=(settings.bootstrap_servers, settings.topic, rate, seconds)
    )
    producer.start()
    producer.join()
    deadline = time.monotonic() + 10
    while len(delays) < rate * seconds and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join()
    store.dispose()
    return delays


def report(label: str, delays: list[float]) -> None:
    ms = [d * 1000 for d in delays]
    print(
        f"{label}: {len(ms):,} events; ms p50 {statistics.median(ms):.1f}  "
        f"p95 {pct(ms, 0.95):.1f}  p99 {pct(ms, 0.99):.1f}  max {max(ms):.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--bootstrap", help="an existing broker; default: the bundled one")
    args = parser.parse_args()

    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or (broker.bootstrap if broker else "")
    work = Path(tempfile.mkdtemp(prefix="runwatch-bench-"))
    try:
        suffix = uuid.uuid4().hex[:6]
        topic, steady, floor = f"bench-{suffix}", f"steady-{suffix}", f"floor-{suffix}"
        create_topics(
            bootstrap, {topic: PARTITIONS, steady: STEADY_PARTITIONS, floor: STEADY_PARTITIONS}
        )
        events = list(Simulator(seed=1).events(args.events))
        messages = messages_for(events)
        elapsed = produce(bootstrap, topic, messages)
        print(
            f"produced {len(events):,} events in {len(messages):,} messages "
            f"({elapsed:.1f}s, {len(messages) / elapsed:,.0f} msg/s)"
        )
        sample = [value for _, value in messages[:20_000]]
        count = len(messages)
        del events, messages
        tune_interpreter()

        bounds = DEFAULT_LIMITS.at(datetime.now(UTC))  # as the ingestor does, once per batch
        started = time.perf_counter()
        for value in sample:
            decode(value, bounds=bounds)
        decode_rate = len(sample) / (time.perf_counter() - started)

        bare_s, size = bare_consume(bootstrap, topic, count)
        bare_rate = count / bare_s
        print(
            f"bare kafka-python consume: {bare_rate:,.0f} msg/s "
            f"({size / bare_s / 1e6:.1f} MB/s, {size / count:.0f} B/msg avg)"
        )
        gc.collect()

        settings = KafkaSettings(
            bootstrap_servers=bootstrap,
            topic=topic,
            group_id=f"rw-{suffix}",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        rw_s, rows = runwatch_ingest(settings, work / "ingest.db", count)
        rw_rate = count / rw_s
        print(
            f"runwatch ingest -> SQLite:  {rw_rate:,.0f} msg/s, {rows / rw_s:,.0f} events/s "
            f"({rows:,} rows, offsets committed per batch)"
        )
        print(f"ratio runwatch / bare:      {rw_rate / bare_rate:.2f}  (target >= 0.5)")
        print(f"  (decode alone: {decode_rate:,.0f} msg/s on this mix)")

        floor_settings = settings.model_copy(update={"topic": floor})
        report(
            f"steady {args.rate:,.0f} events/s for {args.seconds:.0f}s, produce -> bare poll",
            bare_latency(floor_settings, args.rate, args.seconds),
        )
        lat_settings = settings.model_copy(update={"topic": steady, "group_id": f"lat-{suffix}"})
        report(
            f"steady {args.rate:,.0f} events/s for {args.seconds:.0f}s, produce -> row committed",
            latency(lat_settings, work / "latency.db", args.rate, args.seconds),
        )
        print("  (target: row committed p99 <= 50 ms)")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
