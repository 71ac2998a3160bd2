"""Alerting benchmark: produce -> SMTP accepted and produce -> webhook received.

1. Steady: RATE events/s for SECONDS, 10 % Failed; a rule mails and posts on Failed.
   Latency percentiles from the producer's send time to the receiver's arrival time.
2. Burst: BURST Failed events already on the topic when runwatch starts; time to drain them
   all to SMTP (from the first mail on), against a raw aiosmtplib loop sending as many mails
   over the same number of connections (smtp.connections) to the same server. Like for
   like, the burst's rule only mails. With --burst-hook a second burst's rule only posts,
   against a raw aiohttp loop posting as many bodies of the same shape and size over the
   same number of connections (notify.concurrency) to the same endpoint.

The SMTP server (aiosmtpd) and the webhook endpoint (aiohttp) run in their own processes.
--store postgres runs runwatch on a fresh PostgreSQL database (127.0.0.1:5432) per phase;
--seconds 0 skips the steady phase.

    python benchmarks/alerting.py [--rate 200] [--seconds 60] [--burst 5000] [--burst-hook]
        [--store sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import orjson
from percentiles import pct  # benchmarks/, on the path when run as a script
from scale import drop_database, fresh_store

from consumers.config.settings import Settings
from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from consumers.model.events import RunStatusEvent
from consumers.service.app import Service

RULES = """
rules:
  - name: bench-failed
    when: {status: [Failed]}
    severity: 1
    notify: [mail, hook]
"""
SMTP_CONNECTIONS = 8
CONCURRENCY = 16  # notify.concurrency: at most this many webhook connections


def smtp_server(port: int, arrivals: Queue[Any]) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            arrivals.put(("mail", time.time(), envelope.content[:3000]))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    threading.Event().wait()


def http_server(port: int, arrivals: Queue[Any]) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        run = orjson.loads(body)["event"]["RunId"]
        arrivals.put(("hook", time.time(), run))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_catchers() -> tuple[Queue[Any], int, int, list[Any]]:
    """The SMTP server and webhook endpoint, each its own process, reporting arrivals on
    one queue: (arrivals, SMTP port, HTTP port, the processes for stop_catchers)."""
    ctx = multiprocessing.get_context("spawn")
    arrivals: Queue[Any] = ctx.Queue()
    smtp, http = free_port(), free_port()
    servers = [
        ctx.Process(target=smtp_server, args=(smtp, arrivals), daemon=True),
        ctx.Process(target=http_server, args=(http, arrivals), daemon=True),
    ]
    for server in servers:
        server.start()
    time.sleep(1.5)
    return arrivals, smtp, http, servers


def stop_catchers(servers: list[Any]) -> None:
    for server in servers:
        server.terminate()
    for server in servers:  # aiohttp's run_app can sit in its graceful shutdown for good
        server.join(5)
        if server.is_alive():
            server.kill()
            server.join()


def producer(bootstrap: str, topic: str, rate: float, seconds: float, sent: Queue[Any]) -> None:
    from kafka import KafkaProducer

    kafka = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    begin = time.perf_counter()
    total = int(rate * seconds)
    for index in range(total):
        due = begin + index / rate
        while (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        failed = index % 10 == 0
        run = f"steady-{index}"
        event = RunStatusEvent(
            TimeGenerated=datetime.now(UTC),
            RunId=run,
            Status="Failed" if failed else "Running",
            ExperimentName="bench",
        )
        if failed:
            sent.put((run, time.time()))
        kafka.send(topic, key=run.encode(), value=event.to_json())
    kafka.flush()
    kafka.close()


def settings_for(
    bootstrap: str,
    topic: str,
    folder: Path,
    smtp: int,
    http: int,
    *,
    url: str,
    notify: str = "[mail, hook]",
) -> Settings:
    (folder / "rules").mkdir(exist_ok=True)
    rules = RULES.replace("notify: [mail, hook]", f"notify: {notify}")
    (folder / "rules" / "bench.yaml").write_text(rules)
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic": topic,
                "group_id": f"g-{uuid.uuid4().hex[:6]}",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            "store": {"url": url},
            "metrics": {"enabled": False},
            "rules_dir": str(folder / "rules"),
            "smtp": {"host": "127.0.0.1", "port": smtp, "connections": SMTP_CONNECTIONS},
            "notify": {"concurrency": CONCURRENCY},
            "receivers": {
                "mail": {"email": {"to": ["oncall@example.com"]}},
                "hook": {"webhook": {"url": f"http://127.0.0.1:{http}/hook"}},
            },
        }
    )


def run_service(settings: Settings) -> tuple[Service, threading.Event, threading.Thread]:
    service = Service(settings)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,))
    thread.start()
    return service, stop, thread


def report(label: str, ms: list[float]) -> None:
    print(
        f"  {label}: n={len(ms)}  p50 {statistics.median(ms):.1f}  p95 {pct(ms, 0.95):.1f}  "
        f"p99 {pct(ms, 0.99):.1f}  max {max(ms):.1f} ms"
    )


def steady(
    bootstrap: str,
    folder: Path,
    smtp: int,
    http: int,
    arrivals: Queue[Any],
    rate: float,
    seconds: float,
    url: str,
) -> None:
    topic = f"steady-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: 4})
    _, stop, thread = run_service(settings_for(bootstrap, topic, folder, smtp, http, url=url))
    time.sleep(4)  # group join
    ctx = multiprocessing.get_context("spawn")
    sent: Queue[Any] = ctx.Queue()
    proc = ctx.Process(target=producer, args=(bootstrap, topic, rate, seconds, sent))
    proc.start()
    expected = int(rate * seconds) // 10
    sent_at: dict[str, float] = {}
    mail: dict[str, float] = {}
    hook: dict[str, float] = {}
    deadline = time.monotonic() + seconds + 60
    while (len(mail) < expected or len(hook) < expected) and time.monotonic() < deadline:
        while not sent.empty():
            run, at = sent.get()
            sent_at[run] = at
        try:
            kind, at, data = arrivals.get(timeout=0.5)
        except Exception:
            continue
        if kind == "hook":
            hook[data] = at
        else:
            text = data.decode("utf-8", "replace")
            run = text[text.find("steady-") :].split()[0].strip(".,;:)<>\"'")
            mail[run] = at
    proc.join()
    while not sent.empty():
        run, at = sent.get()
        sent_at[run] = at
    stop.set()
    thread.join()
    print(f"steady {rate:.0f} events/s for {seconds:.0f}s, {expected} Failed:")
    report(
        "produce -> SMTP accepted ", [(mail[r] - sent_at[r]) * 1000 for r in mail if r in sent_at]
    )
    report(
        "produce -> webhook recvd", [(hook[r] - sent_at[r]) * 1000 for r in hook if r in sent_at]
    )


def burst(
    bootstrap: str,
    folder: Path,
    smtp: int,
    http: int,
    arrivals: Queue[Any],
    count: int,
    kind: str,
    url: str,
) -> float:
    """`kind` "mail" or "hook": what the burst's rule sends, and what is counted."""
    from kafka import KafkaProducer

    topic = f"burst-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: 4})
    kafka = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20)
    for index in range(count):
        event = RunStatusEvent(
            TimeGenerated=datetime.now(UTC),
            RunId=f"burst-{index}",
            Status="Failed",
            ExperimentName="bench",
        )
        kafka.send(topic, value=event.to_json())
    kafka.flush()
    kafka.close()
    while not arrivals.empty():
        arrivals.get()
    started = time.perf_counter()
    settings = settings_for(bootstrap, topic, folder, smtp, http, url=url, notify=f"[{kind}]")
    _, stop, thread = run_service(settings)
    received = 0
    first = None
    while received < count:
        what, _, _ = arrivals.get(timeout=120)
        if what == kind:
            received += 1
            first = first or time.perf_counter()
    elapsed = time.perf_counter() - started
    drain = time.perf_counter() - (first or started)
    stop.set()
    thread.join()
    rate = count / drain
    noun = "mailed" if kind == "mail" else "posted"
    print(
        f"burst of {count} Failed: all {noun} {elapsed:.1f}s after start "
        f"(incl. group join); {rate:,.0f} {kind}s/s from the first one on"
    )
    return rate


async def raw_smtp(port: int, count: int, connections: int) -> float:
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(connections)]
    for client in clients:
        await client.connect()

    async def worker(client: aiosmtplib.SMTP, numbers: range) -> None:
        for number in numbers:
            message = EmailMessage()
            message["From"] = "runwatch@localhost"
            message["To"] = "oncall@example.com"
            message["Subject"] = f"[runwatch] Failed: raw-{number}"
            message.set_content("raw aiosmtplib loop")
            await client.send_message(message)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c, range(i, count, connections)) for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.quit()
    return count / elapsed


def hook_body(number: int) -> bytes:
    """A body of the shape and size runwatch's native webhook posts for a burst alert."""
    event = RunStatusEvent(
        TimeGenerated=datetime.now(UTC),
        RunId=f"raw-{number}",
        Status="Failed",
        ExperimentName="bench",
    )
    return orjson.dumps(
        {
            "version": "1",
            "notificationId": uuid.uuid4().hex,
            "receiver": "hook",
            "attempt": 1,
            "alert": {"rule": "bench-failed", "severity": 1, "summary": "x" * 200},
            "event": event.model_dump(mode="json"),
            "run": None,
            "timeline": [],
            "children": {"total": 0, "by_status": {}, "failed": []},
            "runUrl": None,
        }
    )


async def raw_http(port: int, count: int, connections: int) -> float:
    """`connections` workers posting over an aiohttp session of at most as many connections."""
    url = f"http://127.0.0.1:{port}/hook"
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(numbers: range) -> None:
            for number in numbers:
                headers = {"Content-Type": "application/json", "Idempotency-Key": str(number)}
                async with session.post(url, data=hook_body(number), headers=headers) as resp:
                    resp.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker(range(i, count, connections)) for i in range(connections)))
        return count / (time.perf_counter() - started)


def drain(arrivals: Queue[Any]) -> None:
    time.sleep(0.5)
    while not arrivals.empty():
        arrivals.get()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument(
        "--burst-hook", action="store_true", help="a webhook burst too, against raw aiohttp"
    )
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    arrivals, smtp, http, servers = start_catchers()
    broker = EmbeddedBroker().start()
    folder = Path(tempfile.mkdtemp(prefix="runwatch-alert-bench-"))
    databases: list[str] = []
    try:
        for phase in ("steady", "burst", "burst-hook"):
            (folder / phase).mkdir()
        if args.seconds > 0:
            url = fresh_store(args.store, folder / "steady", databases)
            steady(
                broker.bootstrap,
                folder / "steady",
                smtp,
                http,
                arrivals,
                args.rate,
                args.seconds,
                url,
            )
        url = fresh_store(args.store, folder / "burst", databases)
        rate = burst(
            broker.bootstrap, folder / "burst", smtp, http, arrivals, args.burst, "mail", url
        )
        drain(arrivals)
        raw = asyncio.run(raw_smtp(smtp, args.burst, SMTP_CONNECTIONS))
        print(
            f"raw aiosmtplib, {SMTP_CONNECTIONS} connections, same server: {raw:,.0f} mails/s; "
            f"ratio runwatch / raw {rate / raw:.2f} (target >= 0.8) [{args.store}]"
        )
        if args.burst_hook:
            drain(arrivals)
            url = fresh_store(args.store, folder / "burst-hook", databases)
            rate = burst(
                broker.bootstrap,
                folder / "burst-hook",
                smtp,
                http,
                arrivals,
                args.burst,
                "hook",
                url,
            )
            drain(arrivals)
            raw = asyncio.run(raw_http(http, args.burst, CONCURRENCY))
            print(
                f"raw aiohttp, {CONCURRENCY} connections, same endpoint: {raw:,.0f} posts/s; "
                f"ratio runwatch / raw {rate / raw:.2f} (target >= 0.8) [{args.store}]"
            )
    finally:
        broker.stop()
        stop_catchers(servers)
        for name in databases:
            drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
