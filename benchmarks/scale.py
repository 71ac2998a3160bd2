"""Scale benchmark: ingest on PostgreSQL with 1 and 2 replicas and on SQLite with 1, then the
dispatch rate on each, all in the same run against the same topic and SMTP server.

Ingest: N events (mixed formats) are produced once; each configuration consumes the whole
topic as its own consumer group, each replica in its own process (KafkaLoop + Ingestor +
store, offsets committed after each store commit, no rules). Rate = N / (last row stored -
first batch received), read from the database by the parent. With --notify, every Failed
event raises an alert to two receivers (throttled per run and status, as the shipped rules
do), recorded in the batch's transaction as `serve` does.

Dispatch: M Failed alerts written straight into the outbox, then one Dispatcher (claims
with FOR UPDATE SKIP LOCKED on PostgreSQL, renders, sends to an aiosmtpd process, marks);
rate = M / time until all are marked sent.

    python benchmarks/scale.py [--events 100000] [--mails 3000] [--bootstrap H:P] [--notify]
                               [--only sqlite1|pg1|pg2 ...] [--no-dispatch]
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from queue import Queue
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql

from consumers.outbox.recorder import recording

sys.path.insert(0, str(Path(__file__).parent))
from ingest import messages_for, produce

from consumers.config.service import KafkaSettings
from consumers.config.settings import Settings
from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from consumers.demo.simulator import Simulator
from consumers.dispatch.dispatcher import Dispatcher
from consumers.ingest.ingestor import Ingestor
from consumers.ingest.kafka_loop import KafkaLoop
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.service.app import tune_interpreter
from consumers.store import open_store
from consumers.store.outbox import Outbox
from consumers.store.writer import DeadLetter
from consumers.telemetry.metrics import Metrics

PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
PARTITIONS = 8


class _NoDeadLetters:
    def publish(self, letters: Sequence[DeadLetter]) -> None:
        if letters:
            raise RuntimeError(f"benchmark data produced {len(letters)} dead letters")


RECEIVERS = {"mail": "email", "hook": "webhook"}


def failed_alert(event: RunStatusEvent) -> list[Alert]:
    """What a Failed rule raises (the shipped rules' throttle: per run and status, 1 h)."""
    if event.Status != "Failed":
        return []
    key = f"RunId={event.RunId}|Status={event.Status}"
    return [
        Alert(
            rule="bench-failed",
            severity=1,
            receivers=tuple(RECEIVERS),
            throttle_key=key,
            throttle_s=3600.0,
            event=event,
        )
    ]


def replica(url: str, kafka: dict[str, Any], started: Any, stop: MpEvent, notify: bool) -> None:
    """One replica's ingest path in its own process (its own GIL, and the collector and switch
    interval tuned, as with `runwatch serve`)."""
    settings = KafkaSettings.model_validate(kafka)
    store = open_store(url)
    metrics = Metrics(CollectorRegistry())
    ingestor = Ingestor(
        store,
        _NoDeadLetters(),
        metrics,
        max_bytes=settings.max_message_bytes,
        evaluate=failed_alert if notify else None,
        receiver_kinds=RECEIVERS,
    )
    first = threading.Event()

    def prepare(records: Sequence[Any]) -> Any:
        if not first.is_set():
            first.set()
            started.put(time.time())
        return ingestor.prepare(records)

    halt = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), halt.set()), daemon=True).start()
    tune_interpreter()  # as `runwatch serve` does once loaded
    KafkaLoop(settings, prepare, ingestor.write, metrics).run(halt)
    store.dispose()


def count_events(url: str, table: str = "events") -> int:
    store = open_store(url)
    try:
        with store.engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    finally:
        store.dispose()


def ingest(
    label: str, url: str, kafka: KafkaSettings, replicas: int, expected: int, notify: bool
) -> float:
    context = multiprocessing.get_context("spawn")
    started: Any = context.Queue()
    stop = context.Event()
    group = {**kafka.model_dump(mode="json"), "group_id": f"bench-{uuid.uuid4().hex[:8]}"}
    processes = [
        context.Process(target=replica, args=(url, group, started, stop, notify))
        for _ in range(replicas)
    ]
    for process in processes:
        process.start()
    first = started.get(timeout=120)
    while (stored := count_events(url)) < expected:
        time.sleep(0.05)
    done = time.time()
    stop.set()
    for process in processes:
        process.join(timeout=60)
    while not started.empty():
        first = min(first, started.get())
    rate = stored / (done - first)
    outbox = f", {count_events(url, 'notifications'):,} notifications" if notify else ""
    print(
        f"ingest {label:<24} {replicas} replica(s): {rate:>9,.0f} events/s "
        f"({stored:,} rows{outbox})"
    )
    return rate


def smtp_sink(port: int, arrivals: Any) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            arrivals.put(1)
            return "250 OK"

    Controller(Handler(), hostname="127.0.0.1", port=port).start()
    threading.Event().wait()


def dispatch(label: str, url: str, smtp_port: int, mails: int) -> float:
    store = open_store(url)
    now = datetime.now(UTC)
    alerts = [
        Alert(
            rule="bench-failed",
            severity=1,
            receivers=("mail",),
            throttle_key=f"RunId=d-{i}",
            throttle_s=0.0,
            event=RunStatusEvent.model_validate(
                {
                    "TimeGenerated": now - timedelta(seconds=1),
                    "RunId": f"d-{i}",
                    "Status": "Failed",
                    "ExperimentName": "bench",
                }
            ),
        )
        for i in range(mails)
    ]
    for start in range(0, mails, 500):
        chunk = alerts[start : start + 500]
        store.write_batch(
            [a.event for a in chunk], record=recording(chunk, {"mail": "email"}), now=now
        )
    settings = Settings.model_validate(
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port},
            "receivers": {"mail": {"email": {"to": ["oncall@example.com"]}}},
        }
    )
    dispatcher = Dispatcher(store, settings, Metrics(CollectorRegistry()))
    outbox = Outbox(store)
    stop = threading.Event()
    began = time.perf_counter()
    thread = dispatcher.start(stop)
    while outbox.depth()["sent"] < mails:
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    stop.set()
    thread.join(timeout=60)
    store.dispose()
    rate = mails / elapsed
    print(f"dispatch {label:<22} 1 dispatcher: {rate:>9,.0f} mails/s ({mails:,} mails)")
    return rate


def pg_database() -> tuple[str, str]:
    name = f"runwatch_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, f"postgresql://postgres@127.0.0.1/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def fresh_store(kind: str, folder: Path, names: list[str]) -> str:
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'{uuid.uuid4().hex[:6]}.db'}"
    else:
        name, url = pg_database()
        names.append(name)
    store = open_store(url, migrate=True)
    store.ensure_partitions(datetime.now(UTC), interval_hours=24, ahead=3)
    store.dispose()
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--mails", type=int, default=3_000)
    parser.add_argument("--bootstrap", help="an existing broker instead of the bundled one")
    parser.add_argument("--notify", action="store_true", help="alerts for Failed events")
    parser.add_argument("--only", action="append", choices=("sqlite1", "pg1", "pg2"))
    parser.add_argument("--no-dispatch", action="store_true")
    args = parser.parse_args()

    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    names: list[str] = []
    arrivals: Queue[Any] = multiprocessing.get_context("spawn").Queue()
    smtp_port = free_port()
    sink = multiprocessing.get_context("spawn").Process(
        target=smtp_sink, args=(smtp_port, arrivals), daemon=True
    )
    sink.start()
    try:
        topic = f"scale-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: PARTITIONS})
        events = list(Simulator(seed=5).events(args.events))
        messages = messages_for(events)
        seconds = produce(bootstrap, topic, messages)
        print(f"produced {len(events):,} events in {len(messages):,} messages ({seconds:.1f}s)")
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap,
            topic=topic,
            session_timeout_ms=2000,
            heartbeat_interval_ms=300,
        )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            runs = [("SQLite", "sqlite", 1), ("PostgreSQL", "pg", 1), ("PostgreSQL", "pg", 2)]
            expected = len({e.natural_key for e in events})
            for label, kind, replicas in runs:
                name = f"{'pg' if kind == 'pg' else 'sqlite'}{replicas}"
                if args.only and name not in args.only:
                    continue
                url = fresh_store(kind, folder, names)
                ingest(label, url, kafka, replicas, expected, args.notify)
            for label, kind in (("SQLite", "sqlite"), ("PostgreSQL", "pg")):
                if args.no_dispatch:
                    break
                dispatch(label, fresh_store(kind, folder, names), smtp_port, args.mails)
    finally:
        sink.terminate()
        for name in names:
            drop_database(name)
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
