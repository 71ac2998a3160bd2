"""`runwatch serve` as a real process: clean stop on SIGTERM, nothing lost or doubled on SIGKILL."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

from kafka import KafkaAdminClient

from consumers.demo.simulator import Simulator
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode, encode_many
from tests.conftest import Topics, serve, wait_for, write_config


def _rows(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def _committed(topics: Topics) -> int:
    admin = KafkaAdminClient(bootstrap_servers=topics.bootstrap)
    try:
        offsets = admin.list_group_offsets(topics.group_id).get(topics.group_id, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topics.topic)


def test_sigterm_finishes_the_batch_commits_and_exits_zero(topics: Topics, tmp_path: Path) -> None:
    db = tmp_path / "runwatch.db"
    config = write_config(tmp_path / "runwatch.yaml", topics, f"sqlite:///{db}")
    events = list(Simulator(seed=3).events(300))
    topics.produce([encode(e, EventFormat.NATIVE) for e in events])
    process = serve(config)
    try:
        wait_for(lambda: _rows(db, "select count(*) from events") == 300, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert _committed(topics) == 300


def test_sigkill_at_random_points_loses_nothing_and_doubles_nothing(
    topics: Topics, tmp_path: Path
) -> None:
    db = tmp_path / "runwatch.db"
    config = write_config(
        tmp_path / "runwatch.yaml", topics, f"sqlite:///{db}", max_poll_records=500
    )
    events = list(Simulator(seed=11).events(20_000))
    assert len({e.natural_key for e in events}) == 20_000
    messages: list[bytes | None] = []
    # Mixed formats: most one event a message, some resource-log envelopes of 20.
    index = 0
    rng = random.Random(5)
    while index < len(events):
        if rng.random() < 0.05:
            messages.append(encode_many(events[index : index + 20], EventFormat.RESOURCE_LOG))
            index += 20
        else:
            fmt = rng.choice([EventFormat.NATIVE, EventFormat.NATIVE, EventFormat.EVENT_GRID])
            messages.append(encode(events[index], fmt))
            index += 1
    topics.produce(messages, keys=[str(i % 7).encode() for i in range(len(messages))])

    kills = 0
    process = serve(config)
    try:
        while kills < 5:
            time.sleep(rng.uniform(0.5, 2.5))
            stored = _rows(db, "select count(*) from events")
            if stored >= 20_000:
                break
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            kills += 1
            process = serve(config)
        wait_for(lambda: _rows(db, "select count(*) from events") >= 20_000, timeout=120)
        try:  # the last restart may still be joining the group on a loaded machine
            wait_for(lambda: _committed(topics) == len(messages), timeout=60)
        except AssertionError as exc:
            log = (tmp_path / "serve.log").read_text()[-4000:]
            detail = f"committed {_committed(topics)} of {len(messages)}"
            raise AssertionError(f"{exc}; {detail}\n{log}") from None
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    assert kills >= 1, "the stream finished before any kill: make it longer"
    with sqlite3.connect(db) as conn:
        rows = conn.execute('select "RunId", "TimeGenerated", "Status" from events').fetchall()
        distinct_runs = conn.execute("select count(*) from runs").fetchone()[0]
    assert len(rows) == 20_000
    expected = {
        (e.RunId, e.TimeGenerated.strftime("%Y-%m-%d %H:%M:%S.%f"), e.Status) for e in events
    }
    assert set(rows) == expected
    assert distinct_runs == len({e.RunId for e in events})
