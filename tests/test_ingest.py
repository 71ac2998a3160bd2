"""Kafka -> store against the real broker: formats, poison, duplicates, metrics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from kafka import KafkaProducer
from sqlalchemy import func, select

from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode, encode_many
from consumers.ingest.producer import (
    ERROR_HEADER,
    OFFSET_HEADER,
    PARTITION_HEADER,
    REASON_HEADER,
    TOPIC_HEADER,
)
from consumers.model.events import RunStatusEvent
from consumers.store import Store
from consumers.store.schema import dead_letters, events, runs
from tests.conftest import RunningService, Topics, wait_for
from tests.poison import POISON, POISON_MAX_BYTES

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_TIME = "time_out_of_range"


def event(run_id: str, status: str, seconds: float = 0, **extra: object) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "TimeGenerated": T0 + timedelta(seconds=seconds),
            "RunId": run_id,
            "Status": status,
            "ExperimentName": "exp",
            "WorkspaceName": "ws",
            **extra,
        }
    )


def count(store: Store, table: object) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_every_format_ends_up_in_the_store(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    envelope = encode_many(
        [event(f"bulk-{i}", "Running", i, Tags={"i": str(i)}) for i in range(50)],
        EventFormat.RESOURCE_LOG,
    )
    topics.produce(
        [
            encode(event("native-1", "Failed", Message="CUDA OOM"), EventFormat.NATIVE),
            encode(event("rl-1", "Completed"), EventFormat.RESOURCE_LOG),
            encode(event("eg-1", "Canceled", Tags={"q": "x"}), EventFormat.EVENT_GRID),
            encode(event("ce-1", "Queued"), EventFormat.CLOUDEVENTS),
            envelope,
        ]
    )
    with service() as running:
        wait_for(lambda: count(store, events) == 54)
        # counted right after the store commit, so a moment after the rows are visible
        wait_for(
            lambda: (
                running.metric("runwatch_events_total", format="resource-log", status="Running")
                == 50
            )
        )
        assert running.metric("runwatch_events_total", format="native", status="Failed") == 1
        assert running.metric("runwatch_events_total", format="event-grid", status="Canceled") == 1
        assert running.metric("runwatch_events_total", format="cloudevents", status="Queued") == 1
    with store.engine.connect() as conn:
        rows = {r.RunId: r for r in conn.execute(select(events))}
        state = {r.RunId: r for r in conn.execute(select(runs))}
    assert rows["native-1"].Message == "CUDA OOM"
    assert rows["native-1"].Status == "Failed"
    assert rows["eg-1"].Tags == {"q": "x"}
    assert rows["eg-1"].WorkspaceName == "ws"
    assert state["ce-1"].Status == "Queued"
    assert {f"bulk-{i}" for i in range(50)} <= rows.keys()
    assert rows["bulk-7"].Tags == {"i": "7"}


def test_poison_is_dead_lettered_and_valid_events_around_it_are_stored(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    values: list[bytes | None] = []
    for index, (_, poison, _) in enumerate(POISON):
        values.append(encode(event(f"before-{index}", "Running"), EventFormat.NATIVE))
        values.append(poison)
    values.append(encode(event("last", "Completed"), EventFormat.NATIVE))
    producer = KafkaProducer(
        bootstrap_servers=topics.bootstrap, acks="all", max_request_size=8 * 1024 * 1024
    )
    for value in values:
        producer.send(topics.topic, value=value, key=b"same-partition")
    producer.flush()
    producer.close()

    with service(max_message_bytes=POISON_MAX_BYTES) as running:
        # One key, one partition: once "last" is counted, every message before it is.
        wait_for(
            lambda: (
                running.metric("runwatch_events_total", format="native", status="Completed") == 1
            )
        )
        assert count(store, events) == len(POISON) + 1
        assert count(store, dead_letters) == len(POISON)
        for reason in {reason for _, _, reason in POISON}:
            expected = sum(1 for _, _, r in POISON if r == reason)
            assert running.metric("runwatch_dead_letters_total", reason=reason) == expected, reason

    with store.engine.connect() as conn:
        stored = {r.RunId for r in conn.execute(select(events.c.RunId))}
        letters = list(conn.execute(select(dead_letters).order_by(dead_letters.c.SourceOffset)))
    assert stored == {f"before-{i}" for i in range(len(POISON))} | {"last"}
    assert [letter.Reason for letter in letters] == [reason for _, _, reason in POISON]
    assert all(letter.Error for letter in letters)

    published = topics.read(topics.dead_letter_topic, len(POISON))
    assert len(published) == len(POISON)
    by_offset = {}
    for message in published:
        headers = dict(message.headers)  # type: ignore[attr-defined]
        assert headers[TOPIC_HEADER].decode() == topics.topic
        assert headers[ERROR_HEADER]
        assert int(headers[PARTITION_HEADER]) >= 0
        by_offset[int(headers[OFFSET_HEADER])] = (headers[REASON_HEADER].decode(), message)
    for letter in letters:
        reason, message = by_offset[letter.SourceOffset]
        assert reason == letter.Reason
        assert (message.value or b"") == (letter.Payload or b"")  # type: ignore[attr-defined]


def test_the_same_event_published_twice_is_one_row(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    once = encode(event("twice", "Failed", Message="x"), EventFormat.NATIVE)
    as_grid = encode(event("twice", "Failed"), EventFormat.EVENT_GRID)
    topics.produce([once, once, as_grid, encode(event("other", "Running"), EventFormat.NATIVE)])
    with service() as running:
        wait_for(lambda: running.metric("runwatch_events_duplicate_total") == 2)
        assert count(store, events) == 2


def test_partial_envelope_stores_good_records_and_keeps_the_message(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    records = orjson.loads(
        encode_many(
            [event("good-1", "Running"), event("good-2", "Failed")], EventFormat.RESOURCE_LOG
        )
    )
    records["records"].append(
        {"category": "AmlRunStatusChangedEvent", "properties": {"Status": "Failed"}}
    )
    records["records"].append({"category": "AmlComputeClusterEvent", "properties": {}})
    topics.produce([orjson.dumps(records)])
    with service() as running:
        wait_for(lambda: running.metric("runwatch_dead_letters_total", reason="schema") == 1)
        assert count(store, dead_letters) == 1
        assert count(store, events) == 2
        assert running.metric("runwatch_records_skipped_total", format="resource-log") == 1
    with store.engine.connect() as conn:
        letter = conn.execute(select(dead_letters)).one()
    assert letter.Reason == "schema"
    assert "records[2]" in letter.Error


def test_out_of_order_arrival_keeps_the_latest_status(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    shuffled = [
        event("ooo", "Completed", 30),
        event("ooo", "Queued", 0),
        event("ooo", "Running", 10, Tags={"old": "tags"}),
    ]
    topics.produce([encode(e, EventFormat.NATIVE) for e in shuffled])
    with service():
        wait_for(lambda: count(store, events) == 3)
    with store.engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.RunId == "ooo")).one()
    assert row.Status == "Completed"
    assert row.StartTime.replace(tzinfo=UTC) == T0 + timedelta(seconds=10)
    assert row.EndTime.replace(tzinfo=UTC) == T0 + timedelta(seconds=30)
    assert row.FirstSeen.replace(tzinfo=UTC) == T0
    assert row.Tags == {}


def test_an_event_from_year_9999_cannot_pin_a_run_state(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    """Issue 12 case 7: a Completed stamped 9999-12-31 kept `runs` at Completed whatever came
    later, and retention (by LastSeen) never removed the run."""
    now = datetime.now(UTC)
    pinned = RunStatusEvent.model_validate(
        {"TimeGenerated": datetime(9999, 12, 31, tzinfo=UTC), "RunId": "pin", "Status": "Completed"}
    )
    topics.produce(
        [
            encode(
                event("pin", "Running").model_copy(update={"TimeGenerated": now}),
                EventFormat.NATIVE,
            ),
            encode(pinned, EventFormat.NATIVE),
            encode(
                event("pin", "Failed").model_copy(
                    update={"TimeGenerated": now + timedelta(seconds=1)}
                ),
                EventFormat.NATIVE,
            ),
        ],
        keys=[b"pin"] * 3,
    )
    with service() as running:
        # Counted after the batch is stored and its letters published.
        wait_for(
            lambda: (
                running.metric("runwatch_dead_letters_total", reason=_TIME) == 1
                and count(store, events) == 2
            )
        )
        assert count(store, dead_letters) == 1
    with store.engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.RunId == "pin")).one()
        letter = conn.execute(select(dead_letters)).one()
    assert row.Status == "Failed"
    assert row.LastSeen.replace(tzinfo=UTC) < now + timedelta(days=1)
    assert letter.Reason == "time_out_of_range"
    assert "9999" in letter.Error
