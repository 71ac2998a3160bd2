"""Three `runwatch serve` processes in one consumer group on one PostgreSQL store: the
partitions are shared, the outbox is claimed with FOR UPDATE SKIP LOCKED, and each of the
500 failures of a 5,000-event stream (`make soak`: 2,000 of 20,000) is mailed once to a real
SMTP server, even when a replica is SIGKILLed mid-run (apart from the documented
send-then-crash window, which the second test measures and bounds)."""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from consumers.config.settings import shipped
from consumers.demo.broker import EmbeddedBroker, create_topics
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from tests.conftest import FULL, RUNWATCH, Topics, serve, wait_for
from tests.servers import SmtpServer

EVENTS = 20_000 if FULL else 5_000  # 5,000: still ten polls of 500 across the replicas
FAILURES = EVENTS // 10
REPLICAS = 3
CONCURRENCY = 8  # notify.concurrency per replica: bounds the send-then-crash window

RULES = """
rules:
  - name: run-failed
    when:
      status: [Failed]
    notify: [ml-oncall]
"""


@pytest.fixture
def wide_topics(broker: EmbeddedBroker, topics: Topics) -> Topics:
    """Six partitions, so that three replicas get two each."""
    wide = Topics(topics.bootstrap, f"{topics.topic}-w", topics.dead_letter_topic, topics.group_id)
    create_topics(broker.bootstrap, {wide.topic: 6})
    return wide


def stream() -> list[RunStatusEvent]:
    """EVENTS events: a fifth of the EVENTS / 2 runs fail, the rest complete, each Running
    first."""
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    events = []
    for i in range(EVENTS // 2):
        outcome = "Failed" if i % 5 == 0 else "Completed"
        for offset, status in ((0, "Running"), (60, outcome)):
            events.append(
                RunStatusEvent.model_validate(
                    {
                        "TimeGenerated": t0 + timedelta(seconds=offset, microseconds=i),
                        "RunId": f"run-{i:05d}",
                        "Status": status,
                        "ExperimentName": "scale",
                    }
                )
            )
    assert sum(e.Status == "Failed" for e in events) == FAILURES
    return events


def configs(
    tmp_path: Path, topics: Topics, url: str, smtp_port: int, lease_s: int = 3
) -> list[Path]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES)
    settings = {
        "kafka": {
            **topics.kafka_settings(max_poll_records=500).model_dump(mode="json"),
        },
        "store": {"url": url, "migrate_on_start": False},
        "metrics": {"listen": "127.0.0.1:0"},
        "rules_dir": str(rules),
        "templates_dir": str(shipped("templates")),
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "runwatch <rw@example.com>"},
        "receivers": {"ml-oncall": {"email": {"to": ["oncall@example.com"]}}},
        # a dead replica's claims come back after 3 s instead of a minute
        "notify": {"lease_s": lease_s, "concurrency": CONCURRENCY, "claim_batch": 50},
    }
    paths = []
    for replica in range(REPLICAS):
        folder = tmp_path / f"replica-{replica}"
        folder.mkdir()
        path = folder / "runwatch.yaml"
        path.write_text(yaml.safe_dump(settings))
        paths.append(path)
    return paths


def db_upgrade(config: Path) -> None:
    done = subprocess.run(
        [RUNWATCH, "db", "upgrade", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def sent_by(config: Path) -> int:
    return (config.parent / "serve.log").read_text().count("sent email notification")


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=60)


def produce(topics: Topics) -> None:
    events = stream()
    topics.produce(
        [encode(e, EventFormat.NATIVE) for e in events], keys=[e.RunId.encode() for e in events]
    )


def test_three_replicas_send_each_failure_once(
    wide_topics: Topics, fresh_pg: str, smtp: SmtpServer, tmp_path: Path
) -> None:
    # No replica dies here, so no claim may come back: a lease of 30 s (not the 3 s a kill
    # test needs) keeps a loaded machine's slow sends from expiring claims, and then any
    # second attempt below is a claim taken twice, not a slow machine.
    paths = configs(tmp_path, wide_topics, fresh_pg, smtp.port, lease_s=30)
    db_upgrade(paths[0])
    processes = [serve(path) for path in paths]
    try:
        produce(wide_topics)
        wait_for(lambda: count(fresh_pg, "SELECT count(*) FROM events") == EVENTS, timeout=180)
        wait_for(
            lambda: (
                count(fresh_pg, "SELECT count(*) FROM notifications WHERE state = 'sent'")
                == FAILURES
            ),
            timeout=120,
        )
        time.sleep(1.0)  # anything sent twice would arrive now
    finally:
        stop_all(processes)
    assert [p.returncode for p in processes] == [0] * REPLICAS
    assert len(smtp.mails) == FAILURES
    assert len({m.message["Message-ID"] for m in smtp.mails}) == FAILURES
    assert count(fresh_pg, "SELECT count(*) FROM notifications") == FAILURES
    assert count(fresh_pg, "SELECT max(attempts) FROM notifications") == 1
    shares = [sent_by(path) for path in paths]
    assert sum(shares) == FAILURES
    assert sum(1 for share in shares if share) >= 2, shares  # the work was shared


def test_sigkill_of_a_replica_mid_run_still_sends_each_failure_once(
    wide_topics: Topics, fresh_pg: str, smtp: SmtpServer, tmp_path: Path
) -> None:
    paths = configs(tmp_path, wide_topics, fresh_pg, smtp.port)
    db_upgrade(paths[0])
    processes = [serve(path) for path in paths]
    try:
        produce(wide_topics)
        # kill the replica that has sent the most, once a quarter of the mails are out
        wait_for(lambda: len(smtp.mails) >= FAILURES // 4, timeout=180)
        victim = max(range(REPLICAS), key=lambda i: sent_by(paths[i]))
        processes[victim].send_signal(signal.SIGKILL)
        assert processes[victim].wait(timeout=10) == -signal.SIGKILL
        mails_at_kill = len(smtp.mails)
        assert mails_at_kill < FAILURES, "the run ended before the kill: make it longer"
        wait_for(lambda: count(fresh_pg, "SELECT count(*) FROM events") == EVENTS, timeout=180)
        wait_for(
            lambda: (
                count(fresh_pg, "SELECT count(*) FROM notifications WHERE state = 'sent'")
                == FAILURES
            ),
            timeout=120,
        )
        time.sleep(1.0)
    finally:
        stop_all(processes)

    survivors = [p.returncode for i, p in enumerate(processes) if i != victim]
    assert survivors == [0] * (REPLICAS - 1)
    assert count(fresh_pg, "SELECT count(*) FROM notifications") == FAILURES
    ids = collections.Counter(str(m.message["X-Runwatch-Notification-Id"]) for m in smtp.mails)
    assert len(ids) == FAILURES  # every failure mailed
    # The documented window: a notification the SMTP server accepted from the victim whose
    # "sent" mark the kill prevented is sent again once its lease expires. Only those can
    # repeat: each was claimed twice (attempts 2), and at most what the victim had in
    # flight (its concurrency) can be in that state.
    doubled = [notification for notification, n in ids.items() if n > 1]
    assert all(n <= 2 for n in ids.values())
    assert len(doubled) <= CONCURRENCY
    if doubled:
        with psycopg.connect(fresh_pg) as conn:
            attempts = conn.execute(
                "SELECT min(attempts) FROM notifications WHERE id = ANY(%s)", (doubled,)
            ).fetchone()
        assert attempts is not None and attempts[0] >= 2
    assert len(smtp.mails) == FAILURES + len(doubled)
    print(f"killed replica {victim} after {mails_at_kill} mails; duplicates: {len(doubled)}")
