"""`runwatch up` / `make demo`: the whole service on embedded defaults in one command.

The bundled broker, SQLite in a demo folder, the service with the shipped rules, a mail
catcher (every mail kept as an .eml file) and a webhook catcher standing in for the
receivers `ml-oncall` and `chat`, and simulated pipelines in all four input formats.
Notifications are printed as they arrive, the newest runs every 15 s, and the web console
(failures by cause, notifications and their fate, silences) is on the metrics port, with a
password made for this demo and printed. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import sys
import threading
import time

from consumers.cli.reports import format_runs
from consumers.config.service import KafkaSettings, LoggingSettings
from consumers.config.settings import Settings
from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from consumers.demo.catchers import MailCatcher, WebhookCatcher
from consumers.demo.simulator import Simulator
from consumers.ingest.decoding import EventFormat
from consumers.ingest.producer import EventPublisher
from consumers.service.app import Service
from consumers.store.queries import RunFilter, list_runs
from consumers.telemetry.logs import setup_logging

DEMO_USER = "demo"
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
    mail = MailCatcher(folder / "mail", printer=_say).start()
    hooks = WebhookCatcher(printer=_say).start()
    os.environ.setdefault("RUNWATCH_DEMO_HOOK_SECRET", secrets.token_hex(16))
    try:
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            group_id="runwatch-demo",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        create_topics(broker.bootstrap, {kafka.topic: 4, kafka.dead_letter_topic: 1})
        metrics_port = 9464 if _port_free(9464) else free_port()
        # The web console, on the ops listener, behind its basic auth: a password per demo,
        # in a private file (printed, a secret would be masked like every configured one).
        password_file = folder / "console-password"
        password_file.touch(mode=0o600)
        password_file.chmod(0o600)
        password_file.write_text(secrets.token_urlsafe(12) + "\n")
        settings = Settings.model_validate(
            {
                "kafka": kafka.model_dump(),
                "store": {"url": f"sqlite:///{folder / 'runwatch.db'}"},
                "metrics": {
                    "listen": f"127.0.0.1:{metrics_port}",
                    "auth": {"username": DEMO_USER, "password_file": str(password_file)},
                },
                "console": {"enabled": True},
                "smtp": {
                    "host": "127.0.0.1",
                    "port": mail.port,
                    "from": "runwatch demo <runwatch@example.com>",
                },
                "receivers": {
                    "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
                    "chat": {
                        "webhook": {
                            "url": f"{hooks.url}/hook",
                            "format": "slack",
                            "secret_env": "RUNWATCH_DEMO_HOOK_SECRET",
                        }
                    },
                },
                "run_url_template": "https://ml.example.com/experiments/{ExperimentName}/runs/{RunId}",
            }
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
            f"  console http://127.0.0.1:{metrics_port}/console/  "
            f"(user {DEMO_USER}, password: cat {password_file}; the same login for /metrics)\n"
            f"  mail catcher 127.0.0.1:{mail.port} (mails in {folder / 'mail'}), "
            f"webhook catcher {hooks.url}\n"
            f"  try: runwatch runs list --store {settings.store.url} --status Failed\n"
            f"       runwatch notifications list --store {settings.store.url}\n"
            "  Ctrl-C stops everything.\n"
        )
        deadline = time.monotonic() + args.duration if args.duration else None
        ticks = 0
        while not stop.wait(1.0):
            ticks += 1
            if ticks % 15 == 0:
                _show(service)
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()
        for thread in threads:
            thread.join(timeout=30)
        _show(service)
    finally:
        stop.set()
        broker.stop()
        hooks.stop()
        mail.stop()
    print(f"runwatch demo: stopped ({mail.handler.count} mails, {len(hooks.received)} webhooks)")
    return 0


def _say(line: str) -> None:
    print(time.strftime("%H:%M:%S ") + line, flush=True)


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
