"""Broker outage benchmark: how soon does `runwatch serve` ingest again once the broker is back?

For each outage length: a private bundled broker (Tansu, memory storage: it comes back with
its state lost, as after a crash of a single-node broker without persistence), a real
`runwatch serve` consuming it, one event stored before; then the broker is stopped for the
outage, started again on the same port with the topics created again, and a poison message
and a valid event are produced. Printed: the time from the broker answering again to the
valid event being stored, and to the poison's dead letter reaching the dead-letter topic.

    python benchmarks/broker_outage.py [--outages 5 15 30] [--session-timeout-ms 2000]

Tansu holds a JoinGroup for about half the session timeout, and a broker that lost its state
makes every consumer join again: with the default 10 s session, that alone is ~5 s.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kafka import KafkaConsumer, KafkaProducer

from consumers.demo.broker import EmbeddedBroker, create_topics, free_port

RUNWATCH = str(Path(sys.executable).parent / "runwatch")
TOPIC, DEAD = "outage-runs", "outage-dead"


def _stored(db: Path, run_id: str) -> bool:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            found = conn.execute("select 1 from events where RunId = ?", (run_id,)).fetchone()
    except sqlite3.OperationalError:
        return False
    return found is not None


def _event(run_id: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return f'{{"TimeGenerated":"{stamp}","RunId":"{run_id}","Status":"Failed"}}'.encode()


def _produce(bootstrap: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in values:
        producer.send(TOPIC, value=value, key=b"one-partition")
    producer.flush()
    producer.close()


def _dead_letter_arrived(bootstrap: str) -> bool:
    consumer = KafkaConsumer(
        DEAD, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if any(consumer.poll(timeout_ms=100).values()):
                return True
        return False
    finally:
        consumer.close()


def _wait(predicate: object, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.02)
    return None


def run(outage: float, session_timeout_ms: int, workdir: Path) -> None:
    port = free_port()
    broker = EmbeddedBroker(port).start()
    create_topics(broker.bootstrap, {TOPIC: 1, DEAD: 1})
    db = workdir / f"outage-{outage:g}.db"
    config = workdir / f"outage-{outage:g}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap,
                    "topic": TOPIC,
                    "dead_letter_topic": DEAD,
                    "group_id": "outage",
                    "session_timeout_ms": session_timeout_ms,
                    "heartbeat_interval_ms": max(session_timeout_ms // 6, 100),
                },
                "store": {"url": f"sqlite:///{db}"},
                "metrics": {"enabled": False},
            }
        )
    )
    log = (workdir / f"outage-{outage:g}.log").open("wb")
    serve = subprocess.Popen([RUNWATCH, "serve", "--config", str(config)], stdout=log, stderr=log)
    try:
        _produce(broker.bootstrap, [b"poison before", _event("before")])
        if _wait(lambda: _stored(db, "before"), 60) is None:
            print(f"outage {outage:g}s: the first event was never stored")
            return
        broker.stop()
        time.sleep(outage)
        broker = EmbeddedBroker(port).start()
        up = time.monotonic()
        create_topics(broker.bootstrap, {TOPIC: 1, DEAD: 1})
        _produce(broker.bootstrap, [b"poison after", _event("after")])
        stored = _wait(lambda: _stored(db, "after"), 120)
        lettered = _wait(lambda: _dead_letter_arrived(broker.bootstrap), 60)
        resume = f"{stored - up:.2f}s" if stored else "never (120 s)"
        letter = f"{lettered - up:.2f}s" if lettered else "never (60 s more)"
        print(f"outage {outage:>4g}s: event stored {resume}, dead letter published {letter}")
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            code = serve.wait()
        print(f"             serve exit code after SIGTERM: {code}")
        log.close()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", type=float, nargs="+", default=[5, 15, 30])
    parser.add_argument("--session-timeout-ms", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runwatch-outage-") as tmp:
        for outage in args.outages:
            run(outage, args.session_timeout_ms, Path(tmp))


if __name__ == "__main__":
    main()
