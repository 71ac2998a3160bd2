"""The consumer loop against a real broker, after joining the group (a start, a broker
outage): a backlog found then is taken in small batches first, so the first events are
stored (and alerted on) within a fraction of a second instead of after one batch of
`max_poll_records`, and nothing polled before a re-join is committed after it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from consumers.ingest.kafka_loop import KafkaLoop, _CommitOnRevoke
from consumers.telemetry.metrics import Metrics
from tests.conftest import Topics

BACKLOG = 6000


def test_backlog_on_joining_is_taken_small_first_then_in_full_batches(topics: Topics) -> None:
    topics.produce([f"m{i}".encode() for i in range(BACKLOG)])
    written: list[int] = []
    done = threading.Event()

    def write(records: Sequence[Any]) -> None:
        written.append(len(records))
        if sum(written) >= BACKLOG:
            done.set()

    loop: KafkaLoop[Sequence[Any]] = KafkaLoop(
        topics.kafka_settings(max_poll_records=5000),
        lambda records: records,
        write,
        Metrics(CollectorRegistry()),
    )
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert done.wait(60), written
    finally:
        stop.set()
        runner.join(30)
    assert sum(written) == BACKLOG
    assert written[0] <= 500, written  # the first batch after joining is small
    assert max(written) > 2000, written  # and a backlog is still drained in big batches


def test_a_batch_polled_before_a_reassignment_is_not_committed_after_it(topics: Topics) -> None:
    """A broker that lost its state hands offsets 0, 1, ... out again and the group is
    re-joined: a batch polled (or a commit failed) before that must not commit its offsets
    under the new assignment, or the group skips every record the new log holds below them
    (seen in tests/test_chaos.py: 1,089 events of a 4 s outage never stored). The batch is
    read again instead, and the store makes that a no-op."""
    topics.produce([f"m{i}".encode() for i in range(50)])
    settings = topics.kafka_settings()
    written: list[int] = []
    stop = threading.Event()
    loop: KafkaLoop[Sequence[Any]]

    def write(records: Sequence[Any]) -> None:
        if not written:  # the group is re-joined while the first batch is being written,
            loop._cut_off = True  # after the broker was seen away (as kafka_loop notes it)
            partitions = [TopicPartition(topics.topic, p) for p in range(3)]
            _CommitOnRevoke(loop).on_partitions_assigned(partitions)
        written.append(len(records))
        if sum(written) >= 50:
            stop.set()

    loop = KafkaLoop(settings, lambda records: records, write, Metrics(CollectorRegistry()))
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive() and sum(written) >= 50, written
    probe = KafkaConsumer(
        bootstrap_servers=topics.bootstrap, group_id=topics.group_id, enable_auto_commit=False
    )
    try:
        committed = {p: probe.committed(TopicPartition(topics.topic, p)) for p in range(3)}
    finally:
        probe.close()
    first = written[0]
    # whatever was committed came from batches after the first one: with one batch, nothing
    if len(written) == 1:
        assert committed == {0: None, 1: None, 2: None}, (committed, written)
    else:
        assert sum(offset or 0 for offset in committed.values()) <= 50 - first, committed
