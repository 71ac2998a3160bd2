"""`runwatch up` / `make demo`: the whole service on embedded defaults in one command.

The bundled broker, SQLite in a demo folder, the ingest service, and simulated pipelines in
all four input formats, with the newest runs printed as they arrive. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time

from consumers.app import Service
from consumers.broker import EmbeddedBroker, create_topics, free_port
from consumers.decoding import EventFormat
from consumers.logs import setup_logging
from consumers.producer import EventPublisher
from consumers.reports import format_runs
from consumers.settings import (
    KafkaSettings,
    LoggingSettings,
    MetricsSettings,
    Settings,
    StoreSettings,
)
from consumers.simulator import Simulator
from consumers.store.queries import RunFilter, list_runs

_FORMATS = (
    EventFormat.NATIVE,
    EventFormat.RESOURCE_LOG,
    EventFormat.EVENT_GRID,
    EventFormat.CLOUDEVENTS,
)


def run_demo(args: argparse.Namespace) -> int:
    folder = args.dir
    folder.mkdir(parents=True, exist_ok=True)
    setup_logging(LoggingSettings(level="WARNING"))
    print(f"runwatch demo: starting the bundled broker (log: {folder / 'broker.log'})")
    broker = EmbeddedBroker(log_path=folder / "broker.log").start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            group_id="runwatch-demo",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        create_topics(broker.bootstrap, {kafka.topic: 4, kafka.dead_letter_topic: 1})
        metrics_port = 9464 if _port_free(9464) else free_port()
        settings = Settings(
            kafka=kafka,
            store=StoreSettings(url=f"sqlite:///{folder / 'runwatch.db'}"),
            metrics=MetricsSettings(listen=f"127.0.0.1:{metrics_port}"),
        )
        service = Service(settings)
        threads = [
            threading.Thread(target=service.run, args=(stop,), name="service"),
            threading.Thread(target=_simulate, args=(kafka, stop, args), name="simulator"),
        ]
        for thread in threads:
            thread.start()
        print(
            f"runwatch demo: broker {broker.bootstrap}, store {settings.store.url}, "
            f"metrics http://127.0.0.1:{metrics_port}/metrics\n"
            f"  try: runwatch runs list --store {settings.store.url} --status Failed\n"
            "  Ctrl-C stops everything.\n"
        )
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.wait(5.0):
            _show(service)
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()
        for thread in threads:
            thread.join(timeout=30)
        _show(service)
    finally:
        stop.set()
        broker.stop()
    print("runwatch demo: stopped")
    return 0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _simulate(kafka: KafkaSettings, stop: threading.Event, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with EventPublisher(kafka) as publisher:
        Simulator(seed=args.seed).run_live(
            lambda event: publisher.publish(event, rng.choice(_FORMATS)),
            stop,
            pipelines_per_minute=args.rate,
        )


def _show(service: Service) -> None:
    records = list_runs(service.store, RunFilter(limit=8))
    print(time.strftime("--- %H:%M:%S newest runs ---"))
    print(format_runs(records, "table"))
    sys.stdout.flush()
