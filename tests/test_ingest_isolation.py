"""The prepare half of ingest (decode, before the store) as a unit: one message's failure is its
own dead letter, and what one hostile envelope costs is bounded (issue 12, cases 1 and 5)."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from consumers.ingest import ingestor as ingest
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.ingest.ingestor import Ingestor
from consumers.model.events import RunStatusEvent
from consumers.store.writer import DeadLetter
from consumers.telemetry.metrics import Metrics


@dataclass
class Record:
    value: bytes | None
    offset: int = 0
    topic: str = "runs"
    partition: int = 0
    key: bytes | None = None


class Sink:
    def publish(self, letters: Sequence[DeadLetter]) -> None:
        pass


def ingestor() -> Ingestor:
    # prepare() never touches the store: the real one is exercised by test_ingest.py.
    store: Any = None
    return Ingestor(store, Sink(), Metrics(CollectorRegistry()), max_bytes=2_000_000)


def valid(run_id: str) -> bytes:
    return encode(
        RunStatusEvent(TimeGenerated=datetime.now(UTC), RunId=run_id, Status="Running"),
        EventFormat.NATIVE,
    )


def stored(prepared: ingest.Prepared) -> list[str]:
    return [event.RunId for _, result in prepared.decoded for event in result.events]


def test_an_unrepresentable_time_is_one_dead_letter_and_the_batch_goes_on() -> None:
    poison = b'{"TimeGenerated":"0001-01-01T00:00:00+01:00","RunId":"x","Status":"Running"}'
    records = [Record(valid("a"), 0), Record(poison, 1), Record(valid("b"), 2)]
    prepared = ingestor().prepare(records)
    assert stored(prepared) == ["a", "b"]
    assert [(letter.offset, letter.reason) for letter in prepared.letters] == [
        (1, "time_out_of_range")
    ]


def test_any_exception_while_one_message_is_prepared_is_its_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ingest.decode

    def failing(value: bytes | None, **kwargs: Any) -> Any:
        if value == b"{}":
            raise RuntimeError("a decoder bug")
        return real(value, **kwargs)

    monkeypatch.setattr(ingest, "decode", failing)
    prepared = ingestor().prepare([Record(valid("a"), 0), Record(b"{}", 1), Record(valid("b"), 2)])
    assert stored(prepared) == ["a", "b"]
    (letter,) = prepared.letters
    assert (letter.offset, letter.reason) == (1, "internal")
    assert "RuntimeError" in letter.error
    assert letter.payload == b"{}"


def _empties_envelope(size: int) -> bytes:
    good = orjson.loads(
        encode(
            RunStatusEvent(TimeGenerated=datetime.now(UTC), RunId="good", Status="Running"),
            EventFormat.RESOURCE_LOG,
        )
    )
    head = orjson.dumps({"records": good["records"]})[:-2]
    return head + b"," + b",".join([b"{}"] * ((size - len(head)) // 3)) + b"]}"


@pytest.mark.parametrize("size", [1_040_000, 14_000])
def test_one_envelope_of_empty_records_costs_little_and_holds_nothing(size: int) -> None:
    """Case 5: a megabyte of `{}` beside one good record took ~0.4 s of CPU and the prepared
    batch held ~37 MB of rejection texts until it was written (96 of them: RSS 730 MB)."""
    value = _empties_envelope(size)
    subject = ingestor()
    gc.collect()
    started = time.process_time()
    subject.prepare([Record(value)])
    cpu = time.process_time() - started
    tracemalloc.start()
    try:
        prepared = subject.prepare([Record(value)])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cpu < 0.2
    assert held < 200_000, held
    (letter,) = prepared.letters
    assert len(letter.error) <= 1000
    assert letter.payload is value  # the message itself, not a copy
