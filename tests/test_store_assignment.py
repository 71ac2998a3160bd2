"""`kafka.assignment: store` against the bundled broker, PostgreSQL and a real SMTP server:
two `runwatch serve` replicas share the partitions through leases in the store; a SIGTERMed
replica's partitions move within about a heartbeat of its exit, a SIGKILLed one's when its
leases expire (session timeout + 1 s at most); with failures produced throughout, every event
is stored and every failure mailed once (docs/deploys.md). And two owners of the same
partitions at once (a stale owner still writing what the new one reads again) store each
event and send each mail once."""

from __future__ import annotations

import collections
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from kafka import KafkaProducer

from consumers.config.settings import Settings, shipped
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from tests.conftest import RUNWATCH, RunningService, Topics, serve, wait_for
from tests.servers import SmtpServer

# The consumer group on the bundled broker holds a rebalance about half of it (4 s), so a
# handover within 2 s can only come from the leases (2 s: room for a loaded machine).
SESSION_MS = 8000
HEARTBEAT_MS = 300
CONCURRENCY = 4  # notify.concurrency: bounds the documented send-then-crash window

RULES = """
rules:
  - name: run-failed
    when: {status: [Failed]}
    notify: [ml-oncall]
"""


def _settings(
    topics: Topics, url: str, rules: Path, smtp_port: int, **kafka: Any
) -> dict[str, Any]:
    return {
        "kafka": topics.kafka_settings(
            assignment="store",
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            **kafka,
        ).model_dump(mode="json", exclude_none=True),
        "store": {"url": url, "migrate_on_start": False},
        "metrics": {"listen": "127.0.0.1:0"},
        "evaluation": {"enabled": False},
        "rules_dir": str(rules),
        "templates_dir": str(shipped("templates")),
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "runwatch <rw@example.com>"},
        "receivers": {"ml-oncall": {"email": {"to": ["oncall@example.com"]}}},
        "notify": {"lease_s": 3, "concurrency": CONCURRENCY},
    }


def _rules(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(RULES)
    return folder


def _config(folder: Path, settings: dict[str, Any]) -> Path:
    folder.mkdir()
    path = folder / "runwatch.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _assignment(config: Path) -> list[int] | None:
    """The partitions of the last `assigned partitions [...]` line, None before the first."""
    log = config.parent / "serve.log"
    lines = [line for line in log.read_text().splitlines() if "assigned partitions" in line]
    if not lines:
        return None
    inside = lines[-1].rsplit("[", 1)[1].split("]", 1)[0]
    return [int(p) for p in inside.split(",") if p.strip()]


def _count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _failed(run: str) -> bytes:
    event = RunStatusEvent(TimeGenerated=datetime.now(UTC), RunId=run, Status="Failed")
    return encode(event, EventFormat.NATIVE)


class _Failures(threading.Thread):
    """A Failed event for a new run every 20 ms until halted, keyed by run (all partitions)."""

    def __init__(self, topics: Topics) -> None:
        super().__init__(daemon=True)
        self._producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
        self._topic = topics.topic
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            run = f"run-{self.sent:05d}"
            self._producer.send(self._topic, key=run.encode(), value=_failed(run))
            self.sent += 1
        self._producer.flush()
        self._producer.close()


def test_replicas_hand_partitions_over_through_the_store(
    topics: Topics, fresh_pg: str, smtp: SmtpServer, tmp_path: Path
) -> None:
    settings = _settings(topics, fresh_pg, _rules(tmp_path), smtp.port)
    a, b, a2 = (_config(tmp_path / name, settings) for name in ("a", "b", "a2"))
    upgrade = subprocess.run(
        [RUNWATCH, "db", "upgrade", "--config", str(a)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    processes = {a: serve(a), b: serve(b)}
    failures = _Failures(topics)
    try:

        def shared() -> bool:
            held = [_assignment(a), _assignment(b)]
            return all(held) and sorted((held[0] or []) + (held[1] or [])) == [0, 1, 2]

        wait_for(shared, 60)  # the first one up takes all, then gives the other its share
        failures.start()
        time.sleep(1.0)

        processes[a].send_signal(signal.SIGTERM)
        assert processes[a].wait(timeout=30) == 0, (a.parent / "serve.log").read_text()[-3000:]
        exited = time.monotonic()
        wait_for(lambda: _assignment(b) == [0, 1, 2], timeout=SESSION_MS / 1000 * 3)
        graceful = time.monotonic() - exited

        processes[a2] = serve(a2)
        wait_for(lambda: bool(_assignment(a2)) and len(_assignment(b) or []) < 3, 60)
        time.sleep(1.0)
        processes[b].send_signal(signal.SIGKILL)
        assert processes[b].wait(timeout=10) == -signal.SIGKILL
        killed = time.monotonic()
        wait_for(lambda: _assignment(a2) == [0, 1, 2], timeout=SESSION_MS / 1000 * 3)
        expired = time.monotonic() - killed
        time.sleep(0.5)
        failures.halt.set()
        failures.join(timeout=10)

        wait_for(lambda: _count(fresh_pg, "SELECT count(*) FROM events") == failures.sent, 60)
        sent = "SELECT count(*) FROM notifications WHERE state = 'sent'"
        wait_for(lambda: _count(fresh_pg, sent) == failures.sent, timeout=60)
        time.sleep(1.0)  # anything sent twice would arrive now
    finally:
        failures.halt.set()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=60)
    print(
        f"handover {graceful:.2f} s after a SIGTERMed replica's exit, "
        f"{expired:.2f} s after a SIGKILL"
    )
    assert graceful < 2.0, f"SIGTERM: partitions moved {graceful:.2f} s after the exit"
    assert SESSION_MS / 1000 - 1 < expired < SESSION_MS / 1000 + 1, f"SIGKILL: {expired:.2f} s"
    assert _count(fresh_pg, "SELECT count(*) FROM notifications") == failures.sent
    ids = collections.Counter(str(m.message["X-Runwatch-Notification-Id"]) for m in smtp.mails)
    assert len(ids) == failures.sent  # every failure mailed
    # Only the documented send-then-crash window of the killed replica can repeat a mail.
    assert all(n <= 2 for n in ids.values())
    assert sum(n - 1 for n in ids.values()) <= CONCURRENCY


def test_two_owners_of_the_same_partitions_store_and_mail_each_failure_once(
    topics: Topics, fresh_pg: str, smtp: SmtpServer, tmp_path: Path
) -> None:
    """The worst overlap a takeover can leave: two replicas reading every partition at once
    (each the only member of its own group here), writing to one store. The store's natural
    key makes the second write of an event a no-op, and the outbox's dedup key keeps one
    notification per failure."""
    rules = _rules(tmp_path)
    first = Settings.model_validate(
        {**_settings(topics, fresh_pg, rules, smtp.port), "store": {"url": fresh_pg}}
    )
    second = first.model_copy(
        update={"kafka": first.kafka.model_copy(update={"group_id": f"{topics.group_id}-2"})}
    )
    runs = [f"run-{i:04d}" for i in range(300)]
    with RunningService(first) as one, RunningService(second) as two:
        topics.produce([_failed(run) for run in runs], keys=[run.encode() for run in runs])
        decoded = {"format": "native", "status": "Failed"}
        for service in (one, two):  # both read everything
            wait_for(lambda s=service: s.metric("runwatch_events_total", **decoded) >= 300, 60)
        sent = "SELECT count(*) FROM notifications WHERE state = 'sent'"
        wait_for(lambda: _count(fresh_pg, sent) == len(runs), timeout=60)
        time.sleep(1.0)
        # each event written twice, once as a no-op
        duplicates = sum(s.metric("runwatch_events_duplicate_total") for s in (one, two))
    assert duplicates == len(runs)
    assert _count(fresh_pg, "SELECT count(*) FROM events") == len(runs)
    assert _count(fresh_pg, "SELECT count(*) FROM notifications") == len(runs)
    assert len(smtp.mails) == len(runs)
