"""`runwatch serve` against what Kafka can do to it: a message too large for the dead-letter
topic, a broker that restarts with its state gone, and a clean stop. Each is a real `serve`
process on a real broker; what is asserted is what a user sees (rows, the dead-letter topic,
the exit code, the log)."""

from __future__ import annotations

import logging
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.ingest.kafka_clients import close_consumer
from consumers.ingest.producer import (
    KEY_SIZE_HEADER,
    OFFSET_HEADER,
    PARTITION_HEADER,
    REASON_HEADER,
    SIZE_HEADER,
    TOPIC_HEADER,
    TRUNCATED_HEADER,
)
from tests.conftest import RunningService, Topics, serve, wait_for, write_config
from tests.test_ingest import event

_BIG = 3_000_000
_TOPIC_LIMIT = 200_000  # kafka.dead_letter_max_bytes in these tests
_STORE_CAP = 500_000  # store.dead_letter_payload_max_bytes
_RESUME_BUDGET_S = 2.0
_LOADED_MACHINE_SLACK_S = 2.0
_LOG_PROBLEM = re.compile(r"\bERROR\b|Traceback")


def _rows(db: Path, sql: str) -> list[Any]:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def _stored(db: Path, run_id: str) -> bool:
    return bool(_rows(db, f"select 1 from events where RunId = '{run_id}'"))


def _config(path: Path, topics: Topics, db: Path, **store: object) -> Path:
    config = write_config(
        path, topics, f"sqlite:///{db}", dead_letter_max_bytes=_TOPIC_LIMIT, fetch_max_wait_ms=10
    )
    data = yaml.safe_load(config.read_text())
    data["store"].update(store)
    config.write_text(yaml.safe_dump(data))
    return config


def _stop(process: subprocess.Popen[bytes], log: Path) -> str:
    """SIGTERM, then the exit code must be 0 and the log free of errors and tracebacks."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text[-6000:]
    return text


def _produce(bootstrap: str, topic: str, values: list[bytes], key: bytes) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024
    )
    try:
        for value in values:
            producer.send(topic, value=value, key=key)
        producer.flush(timeout=30)
    finally:
        producer.close()


def _read_all(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


def test_a_message_too_large_for_the_dead_letter_topic_never_blocks_its_partition(
    topics: Topics, tmp_path: Path
) -> None:
    """Issue 12 case 4: the 3 MB message is stored (capped) and published truncated, with
    headers saying so; the valid event behind it on the same partition is stored promptly."""
    db = tmp_path / "runwatch.db"
    config = _config(
        tmp_path / "runwatch.yaml", topics, db, dead_letter_payload_max_bytes=_STORE_CAP
    )
    huge = b'{"records": [' + b" " * (_BIG - 15) + b"]}"
    assert len(huge) == _BIG
    valid = encode(event("after-the-big-one", "Failed"), EventFormat.NATIVE)
    process = serve(config)
    try:
        _produce(topics.bootstrap, topics.topic, [huge, valid], key=b"same-partition")
        produced = time.monotonic()
        wait_for(lambda: _stored(db, "after-the-big-one"), timeout=60)
        print(f"valid event behind a 3 MB message stored after {time.monotonic() - produced:.2f}s")
        [(reason, size, kept, offset, partition)] = _rows(
            db,
            "select Reason, PayloadBytes, length(Payload), SourceOffset, SourcePartition "
            "from dead_letters",
        )
        assert (reason, size, kept) == ("too_large", _BIG, _STORE_CAP)
        [published] = _read_all(topics.bootstrap, topics.dead_letter_topic, 1)
    finally:
        log = _stop(process, tmp_path / "serve.log")
    assert not _LOG_PROBLEM.search(log), log[-6000:]
    headers = {name: value.decode() for name, value in published.headers}
    assert headers[REASON_HEADER] == "too_large"
    assert headers[TRUNCATED_HEADER] == "true"
    assert (headers[SIZE_HEADER], headers[KEY_SIZE_HEADER]) == (str(_BIG), "14")
    assert headers[TOPIC_HEADER] == topics.topic
    assert (headers[PARTITION_HEADER], headers[OFFSET_HEADER]) == (str(partition), str(offset))
    assert len(published.value) < _TOPIC_LIMIT
    assert published.value == huge[: len(published.value)]


def test_sigterm_stops_cleanly_with_no_error_in_the_log(topics: Topics, tmp_path: Path) -> None:
    """Issue 12 case 9: a clean stop logged `'NoneType' object has no attribute 'recv'`."""
    db = tmp_path / "runwatch.db"
    config = _config(tmp_path / "runwatch.yaml", topics, db)
    topics.produce([encode(event(f"clean-{i}", "Running"), EventFormat.NATIVE) for i in range(20)])
    topics.produce([b"not json"])
    log_path = tmp_path / "serve.log"
    for attempt in range(3):  # the race is timing-dependent: stop a few times
        process = serve(config)
        try:
            started = attempt + 1  # this process has joined the group: its handler is set
            wait_for(lambda n=started: log_path.read_text().count("assigned partitions") >= n)
            wait_for(lambda: len(_rows(db, "select 1 from dead_letters")) == 1, timeout=60)
            wait_for(lambda: len(_rows(db, "select 1 from events")) == 20, timeout=60)
            time.sleep(0.3 * attempt)  # stop at different moments of a poll
        finally:
            log = _stop(process, log_path)
    assert not _LOG_PROBLEM.search(log), log[-6000:]


def test_serve_recovers_from_a_broker_that_restarts_with_its_state_lost(tmp_path: Path) -> None:
    """Issue 12 case 9: after the (memory-storage) broker restarts, the dead-letter producer
    must not loop on UnknownProducerIdError, and ingest resumes within 2 s of the broker
    answering again."""
    port = free_port()
    broker_log = tmp_path / "tansu.log"
    broker = EmbeddedBroker(port, log_path=broker_log).start()
    suffix = tmp_path.name[-12:].replace("_", "-")
    topics = Topics(
        bootstrap=broker.bootstrap,
        topic=f"restart-{suffix}",
        dead_letter_topic=f"restart-dead-{suffix}",
        group_id=f"restart-{suffix}",
    )
    names = {topics.topic: 1, topics.dead_letter_topic: 1}
    create_topics(broker.bootstrap, names)
    db = tmp_path / "runwatch.db"
    config = _config(tmp_path / "runwatch.yaml", topics, db)
    process = serve(config)
    try:
        # Before: the dead-letter producer gets a producer id and sequence numbers.
        topics.produce([b"poison one", encode(event("before", "Running"), EventFormat.NATIVE)])
        wait_for(lambda: _stored(db, "before"), timeout=60)
        wait_for(lambda: len(_rows(db, "select 1 from dead_letters")) == 1, timeout=30)
        assert len(_read_all(broker.bootstrap, topics.dead_letter_topic, 1)) == 1

        broker.stop()
        time.sleep(5)  # an outage long enough for the clients' reconnect backoff to grow
        broker = EmbeddedBroker(port, log_path=broker_log).start()
        up = time.monotonic()
        create_topics(broker.bootstrap, names)
        topics.produce([b"poison two", encode(event("after", "Failed"), EventFormat.NATIVE)])
        wait_for(lambda: _stored(db, "after"), timeout=60)
        resumed = time.monotonic() - up
        print(f"ingest resumed {resumed:.2f}s after the broker answered again")
        # (The store keeps one row: the new broker numbers offsets from 0 again, and the
        # dead_letters key is source topic, partition and offset.)
        letters = _read_all(broker.bootstrap, topics.dead_letter_topic, 1)
        assert [letter.value for letter in letters] == [b"poison two"]
        assert resumed < _RESUME_BUDGET_S + _LOADED_MACHINE_SLACK_S, resumed
    finally:
        try:
            log = _stop(process, tmp_path / "serve.log")
        finally:
            broker.stop()
    # kafka-python logs the outage itself at ERROR (refused connections, a reset socket with
    # its traceback); runwatch's own log has no error, and the stop none at all.
    assert not re.search(r"ERROR consumers\.", log), log[-6000:]
    stop_at = log.rfind("SIGTERM received")
    assert not _LOG_PROBLEM.search(log[stop_at:]), log[stop_at:]


def test_a_consumer_in_a_state_it_cannot_leave_is_replaced(
    topics: Topics, service: Callable[..., RunningService], tmp_path: Path
) -> None:
    """A consumer whose poll() raises for good (here: closed under the loop, kafka-python's
    IllegalStateError) is closed and built again; ingest goes on."""
    topics.produce([encode(event("first", "Running"), EventFormat.NATIVE)])
    with service() as running:
        wait_for(lambda: running.metric("runwatch_events_total", format="native", status="Running"))
        loop = running.service._loop
        assert loop is not None and loop._consumer is not None
        loop._consumer.close(autocommit=False)
        topics.produce([encode(event("second", "Failed"), EventFormat.NATIVE)])
        wait_for(
            lambda: running.metric("runwatch_events_total", format="native", status="Failed"),
            timeout=60,
        )
        assert running.metric("runwatch_kafka_clients_recreated_total", client="consumer") == 1
        assert running.thread.is_alive()


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_closing_a_consumer_while_it_reads_logs_no_error(topics: Topics) -> None:
    """The cause of `'NoneType' object has no attribute 'recv'` at a clean stop: kafka-python
    closes the consumer's sockets from the calling thread while its IO thread may be reading
    them. A race, so many closes while large fetch responses stream in (with kafka-python's
    own close(), about 6 % of them logged an ERROR: that traceback, or a cancelled metadata
    refresh)."""
    producer = KafkaProducer(
        bootstrap_servers=topics.bootstrap, linger_ms=5, max_request_size=4_000_000
    )
    for index in range(300):
        producer.send(topics.topic, b"x" * 100_000, partition=index % 3)
    producer.flush()
    producer.close()
    errors = _Errors()
    logging.getLogger("kafka").addHandler(errors)
    rng = random.Random(12)
    try:
        for _ in range(60):
            consumer = KafkaConsumer(
                bootstrap_servers=topics.bootstrap,
                group_id=None,
                fetch_max_wait_ms=10,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=10_000_000,
            )
            consumer.assign([TopicPartition(topics.topic, p) for p in range(3)])
            consumer.poll(timeout_ms=100)
            consumer.poll(timeout_ms=0)  # the next fetches are in flight
            time.sleep(rng.uniform(0, 0.005))
            close_consumer(consumer)
    finally:
        logging.getLogger("kafka").removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []
