"""Issue 12 against a real `runwatch serve`: messages that stopped it (an unrepresentable time,
a tag nested 300 levels deep), one that bloated it (a megabyte of empty records) and one that
pinned a run's state (Completed in 9999), each followed in the same partition by a valid
event. Serve keeps running, the valid events are stored, each poison is a dead letter with its
reason on the topic and in the store, and the offsets move past all of them."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from kafka import KafkaAdminClient, KafkaProducer

from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.ingest.producer import REASON_HEADER
from consumers.model.events import RunStatusEvent
from tests.conftest import RUNWATCH, Topics, serve, wait_for, write_config


def _event(run_id: str, status: str, at: datetime, **extra: object) -> bytes:
    return encode(
        RunStatusEvent.model_validate(
            {"TimeGenerated": at, "RunId": run_id, "Status": status, **extra}
        ),
        EventFormat.NATIVE,
    )


def _raw(run_id: str, time: str, tail: bytes = b"") -> bytes:
    return b'{"TimeGenerated":"%s","RunId":"%s","Status":"Running"%s}' % (
        time.encode(),
        run_id.encode(),
        tail,
    )


def _empties_envelope(size: int) -> bytes:
    now = datetime.now(UTC)
    good = orjson.loads(
        encode(
            RunStatusEvent(TimeGenerated=now, RunId="env-good", Status="Running"),
            EventFormat.RESOURCE_LOG,
        )
    )
    head = orjson.dumps({"records": good["records"]})[:-2]
    return head + b"," + b",".join([b"{}"] * ((size - len(head)) // 3)) + b"]}"


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return list(conn.execute(sql).fetchall())
    except sqlite3.OperationalError:  # not created yet
        return []


def _committed(topics: Topics) -> int:
    admin = KafkaAdminClient(bootstrap_servers=topics.bootstrap)
    try:
        offsets = admin.list_group_offsets(topics.group_id).get(topics.group_id, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topics.topic)


def test_poison_then_valid_events_serve_keeps_running(topics: Topics, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    deep = b"[" * 300 + b'"v"' + b"]" * 300
    messages = [
        (_raw("case1-early", "0001-01-01T00:00:00+01:00"), "time_out_of_range"),
        (_event("ok-1", "Running", now), None),
        (_raw("case1-late", "9999-12-31T23:30:00-01:00"), "time_out_of_range"),
        (_raw("case2", now.isoformat(), b',"Tags":{"deep":' + deep + b"}"), "too_deep"),
        (_event("ok-2", "Running", now), None),
        (_empties_envelope(1_000_000), "too_many_records"),
        (_event("pinned", "Running", now - timedelta(minutes=2)), None),
        (_event("pinned", "Completed", datetime(9999, 12, 31, tzinfo=UTC)), "time_out_of_range"),
        (_event("pinned", "Failed", now - timedelta(minutes=1), Message="real failure"), None),
        (_event("ok-last", "Completed", now), None),
    ]
    producer = KafkaProducer(
        bootstrap_servers=topics.bootstrap, acks="all", max_request_size=8 * 1024 * 1024
    )
    for value, _ in messages:  # one key: one partition, in this order, in one or two batches
        producer.send(topics.topic, value=value, key=b"one-partition")
    producer.flush()
    producer.close()

    db = tmp_path / "runwatch.db"
    config = write_config(tmp_path / "runwatch.yaml", topics, f"sqlite:///{db}")
    process = serve(config)
    log = tmp_path / "serve.log"

    def last_stored() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}:\n{log.read_text()}")
        return bool(_rows(db, "select 1 from events where \"RunId\" = 'ok-last'"))

    try:
        wait_for(last_stored, timeout=90)
        wait_for(lambda: _committed(topics) == len(messages), timeout=60)
        assert process.poll() is None, "serve stopped"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, log.read_text()[-4000:]

    stored = {row[0] for row in _rows(db, 'select "RunId" from events')}
    assert stored == {"ok-1", "ok-2", "pinned", "ok-last"}
    letters = _rows(db, 'select "SourceOffset", "Reason", "Error" from dead_letters order by 1')
    expected = [reason for _, reason in messages if reason is not None]
    assert [reason for _, reason, _ in letters] == expected
    assert all(error for _, _, error in letters)

    published = topics.read(topics.dead_letter_topic, len(expected))
    reasons = [dict(m.headers)[REASON_HEADER].decode() for m in published]  # type: ignore[attr-defined]
    assert sorted(reasons) == sorted(expected)

    # Case 7: the run's state is the real, later failure, not the Completed from 9999.
    shown = subprocess.run(
        [RUNWATCH, "runs", "show", "pinned", "--config", str(config), "-o", "json"],
        capture_output=True,
        check=True,
    )
    run = json.loads(shown.stdout)["run"]
    assert (run["status"], run["message"]) == ("Failed", "real failure")
