"""Unit tests of what decoding refuses on purpose (issue 12): times that cannot be right,
shapes over the `ingest:` limits, and any exception inside a decoder. Each is a DecodeError
with a precise reason (or one rejected record of an envelope), never anything else."""

from __future__ import annotations

import time
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from consumers.ingest import decoding
from consumers.ingest.decoding import Decoded, EventFormat, decode
from consumers.ingest.encoding import encode, encode_many
from consumers.model.errors import DecodeError
from consumers.model.events import RunStatusEvent
from consumers.model.limits import PARSED_UTC, IngestLimits
from consumers.model.updates import RunUpdate

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
BOUNDS = IngestLimits().at(NOW)
UNREPRESENTABLE = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00")
FORMATS = list(EventFormat)


def event(run_id: str = "r1", **changes: Any) -> RunStatusEvent:
    values: dict[str, Any] = {
        "TimeGenerated": NOW - timedelta(minutes=5),
        "RunId": run_id,
        "Status": "Running",
        "ExperimentName": "exp",
        "WorkspaceName": "ws",
    }
    values.update(changes)
    return RunStatusEvent.model_validate(values)


def edit(value: bytes, fmt: EventFormat, **fields: Any) -> bytes:
    """One encoded event with raw JSON values put in place (times no model could hold, values
    no encoder would write): `time=` is the format's own time key, the rest go where the
    format keeps the run's columns."""
    doc = orjson.loads(value)
    envelope = fmt in {EventFormat.RESOURCE_LOG, EventFormat.LOG_ANALYTICS}
    record = doc["records"][0] if envelope else doc
    time_key = {
        EventFormat.NATIVE: "TimeGenerated",
        EventFormat.RESOURCE_LOG: "time",
        EventFormat.EVENT_GRID: "eventTime",
        EventFormat.CLOUDEVENTS: "time",
        EventFormat.LOG_ANALYTICS: "TimeGenerated",
    }[fmt]
    if "time" in fields:
        record[time_key] = fields.pop("time")
    bag = {
        EventFormat.NATIVE: record,
        EventFormat.RESOURCE_LOG: record.get("properties"),
        EventFormat.EVENT_GRID: record.get("data"),
        EventFormat.CLOUDEVENTS: record.get("data"),
        EventFormat.LOG_ANALYTICS: record,  # a projection may add columns the table lacks
    }[fmt]
    grid = fmt in {EventFormat.EVENT_GRID, EventFormat.CLOUDEVENTS}
    for column, raw in fields.items():
        key = column
        if grid:  # Event Grid data keys are camelCase, the label bags named runTags/...
            key = {"Tags": "runTags", "Properties": "runProperties"}.get(column, column)
            key = key[0].lower() + key[1:]
        bag[key] = raw
    return orjson.dumps(doc)


def one(fmt: EventFormat, **fields: Any) -> bytes:
    return edit(encode(event(), fmt), fmt, **fields)


def reason_of(value: bytes, bounds: Any = BOUNDS) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(value, bounds=bounds)
    assert 0 < len(caught.value.detail) <= 500
    return caught.value.reason


def nested(depth: int, leaf: Any = "v") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_bytes(depth: int) -> bytes:
    """Deeper than orjson can build or write: the raw text."""
    return b"[" * depth + b'"v"' + b"]" * depth


def with_raw(fmt: EventFormat, raw: bytes, column: str = "Tags") -> bytes:
    """`{column}: {"k": <raw>}` spliced in as text: orjson cannot write 255+ levels, nor an
    integer past 64 bits. `Message` takes the raw value itself."""
    marker = '"@@RAW@@"'
    inner = orjson.loads(marker)
    value = one(fmt, **{column: inner if column == "Message" else {"k": inner}})
    assert value.count(marker.encode()) == 1
    return value.replace(marker.encode(), raw)


def update_doc(**changes: Any) -> bytes:
    body: dict[str, Any] = {"TimeGenerated": "2026-11-02T11:00:00Z", "RunId": "r1"}
    body.update(changes)
    return orjson.dumps({"RunUpdate": body})


# --- time sanity --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stamp", UNREPRESENTABLE)
def test_a_time_utc_cannot_hold_is_time_out_of_range(fmt: EventFormat, stamp: str) -> None:
    """Issue 12 case 1: this raised OverflowError out of decode(), and serve died on it."""
    assert reason_of(one(fmt, time=stamp)) == "time_out_of_range"


@pytest.mark.parametrize("stamp", UNREPRESENTABLE)
def test_a_run_update_with_a_time_utc_cannot_hold_is_time_out_of_range(stamp: str) -> None:
    assert reason_of(update_doc(TimeGenerated=stamp)) == "time_out_of_range"


@pytest.mark.parametrize("fmt", FORMATS)
def test_times_beyond_the_skew_or_before_the_floor_are_refused(fmt: EventFormat) -> None:
    """Case 7: a Completed event stamped 9999-12-31 would pin its run's state forever."""
    for stamp in ("9999-12-31T00:00:00Z", "2026-11-03T12:01:00Z", "1999-12-31T23:59:59Z"):
        assert reason_of(one(fmt, time=stamp)) == "time_out_of_range", stamp
    for stamp in ("2026-11-03T11:59:00Z", "2000-01-01T00:00:00Z", "2026-11-02T13:00:00+01:00"):
        (got,) = decode(one(fmt, time=stamp), bounds=BOUNDS).events
        assert got.TimeGenerated == datetime.fromisoformat(stamp).astimezone(UTC)


def test_skew_and_floor_are_configurable() -> None:
    strict = IngestLimits(max_future_skew_s=60, earliest=datetime(2026, 1, 1, tzinfo=UTC))
    bounds = strict.at(NOW)
    native = EventFormat.NATIVE
    assert reason_of(one(native, time="2026-11-02T12:02:00Z"), bounds) == "time_out_of_range"
    assert reason_of(one(native, time="2025-12-31T23:59:00Z"), bounds) == "time_out_of_range"
    assert decode(one(native, time="2026-11-02T12:00:59Z"), bounds=bounds).events
    assert decode(one(native, time="2026-01-01T00:00:00Z"), bounds=bounds).events


def test_a_run_update_from_the_future_is_refused() -> None:
    assert reason_of(update_doc(TimeGenerated="9999-12-31T00:00:00Z")) == "time_out_of_range"
    assert reason_of(update_doc(TimeGenerated="1970-01-01T00:00:00Z")) == "time_out_of_range"


def test_without_bounds_decode_checks_against_the_wall_clock() -> None:
    assert reason_of(one(EventFormat.NATIVE, time="9999-12-31T00:00:00Z"), None) == (
        "time_out_of_range"
    )
    now = datetime.now(UTC).isoformat()
    assert decode(one(EventFormat.NATIVE, time=now)).events


@pytest.mark.parametrize(
    "fmt", [EventFormat.RESOURCE_LOG, EventFormat.EVENT_GRID, EventFormat.LOG_ANALYTICS]
)
def test_only_the_record_with_the_bad_time_is_rejected(fmt: EventFormat) -> None:
    docs = [orjson.loads(encode(event(f"r{i}"), fmt)) for i in range(3)]
    envelope = fmt is not EventFormat.EVENT_GRID
    items = [d["records"][0] for d in docs] if envelope else docs
    time_key = {
        EventFormat.RESOURCE_LOG: "time",
        EventFormat.EVENT_GRID: "eventTime",
        EventFormat.LOG_ANALYTICS: "TimeGenerated",
    }[fmt]
    items[1][time_key] = "0001-01-01T00:00:00+01:00"
    value = orjson.dumps({"records": items} if envelope else items)
    decoded = decode(value, bounds=BOUNDS)
    assert [e.RunId for e in decoded.events] == ["r0", "r2"]
    assert decoded.rejected is not None
    assert (decoded.rejected.count, decoded.rejected.reason) == (1, "time_out_of_range")
    assert "[1]" in decoded.rejected.first[0]


# --- nesting depth ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("depth", [256, 300, 1000])
def test_tag_values_nested_past_the_limit_are_too_deep(fmt: EventFormat, depth: int) -> None:
    """Case 2: 255+ levels made orjson raise TypeError out of decode()."""
    assert reason_of(with_raw(fmt, nested_bytes(depth))) == "too_deep"


def test_property_values_and_text_columns_nested_too_deep_are_refused() -> None:
    raw = nested_bytes(300)
    assert reason_of(with_raw(EventFormat.NATIVE, raw, "Properties")) == "too_deep"
    # Resource-log records may carry a JSON value in a text column (kept as its JSON text).
    assert reason_of(with_raw(EventFormat.RESOURCE_LOG, raw, "Message")) == "too_deep"


def test_depth_is_configurable_and_within_it_values_are_kept_as_json_text() -> None:
    bounds = IngestLimits(max_depth=3).at(NOW)
    ok = decode(one(EventFormat.NATIVE, Tags={"t": nested(3)}), bounds=bounds)
    assert ok.events[0].Tags == {"t": '[[["v"]]]'}
    assert reason_of(one(EventFormat.NATIVE, Tags={"t": nested(4)}), bounds) == "too_deep"
    assert reason_of(one(EventFormat.NATIVE, Tags={"t": {"a": {"b": [{}]}}}), bounds) == (
        "too_deep"
    )


def test_integers_past_64_bits_in_a_tag_are_kept_as_number_text() -> None:
    """orjson cannot write them (it raised out of decode); the native fast path keeps the
    digits, the other formats' parser (orjson) reads them as a float."""
    digits = b"123456789012345678901234567890"
    (native,) = decode(with_raw(EventFormat.NATIVE, digits), bounds=BOUNDS).events
    assert native.Tags == {"k": digits.decode()}
    for fmt in FORMATS:
        (got,) = decode(with_raw(fmt, digits), bounds=BOUNDS).events
        assert float(got.Tags["k"]) == float(digits), fmt


def test_a_duration_no_database_column_can_hold_is_a_schema_error() -> None:
    value = one(EventFormat.NATIVE, DurationMs=1).replace(
        b'"DurationMs":1', b'"DurationMs":123456789012345678901234567890'
    )
    assert reason_of(value) == "schema"


# --- counts and sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_too_many_tags_or_properties(fmt: EventFormat) -> None:
    many = {f"k{i}": "v" for i in range(501)}
    assert reason_of(one(fmt, Tags=many)) == "too_many_labels"
    assert reason_of(one(fmt, Properties=many)) == "too_many_labels"
    (got,) = decode(one(fmt, Tags=dict(list(many.items())[:500])), bounds=BOUNDS).events
    assert len(got.Tags) == 500
    assert reason_of(one(fmt, Tags={"a": "1", "b": "2"}), IngestLimits(max_labels=1).at(NOW)) == (
        "too_many_labels"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_keys_values_and_text_columns_over_their_limits_are_too_long(fmt: EventFormat) -> None:
    assert reason_of(one(fmt, Tags={"k" * 1025: "v"})) == "too_long"
    assert reason_of(one(fmt, Properties={"p": "v" * 65_537})) == "too_long"
    assert decode(one(fmt, Tags={"k" * 1024: "v" * 65_536}), bounds=BOUNDS).events
    # 200: the envelope's ARM ID (ResourceId, 139 characters here) is a text column too
    small = IngestLimits(max_key_chars=8, max_value_chars=16, max_text_chars=200).at(NOW)
    assert reason_of(one(fmt, Tags={"k" * 9: "v"}), small) == "too_long"
    assert reason_of(one(fmt, Tags={"k": "v" * 17}), small) == "too_long"
    assert reason_of(one(fmt, ExperimentName="e" * 201), small) == "too_long"
    assert decode(one(fmt, Tags={"k" * 8: "v" * 16}, ExperimentName="e" * 200), bounds=small)


def test_a_long_message_column_is_too_long() -> None:
    assert reason_of(one(EventFormat.NATIVE, Message="m" * 65_537)) == "too_long"
    assert decode(one(EventFormat.NATIVE, Message="m" * 65_536), bounds=BOUNDS).events


def test_a_nested_value_whose_json_text_grows_past_the_limit_is_too_long() -> None:
    """`1e9` is 3 bytes on the wire and `1000000000.0` as text: the message size alone does
    not bound what a nested value becomes."""
    small = IngestLimits(max_value_chars=100).at(NOW)
    value = with_raw(EventFormat.NATIVE, b"[" + b",".join([b"1e9"] * 20) + b"]")
    assert len(value) < 400
    assert reason_of(value, small) == "too_long"


@pytest.mark.parametrize(
    "fmt", [EventFormat.RESOURCE_LOG, EventFormat.EVENT_GRID, EventFormat.LOG_ANALYTICS]
)
def test_envelopes_over_the_record_limit_are_refused_whole(fmt: EventFormat) -> None:
    events = [event(f"r{i}") for i in range(6)]
    assert reason_of(encode_many(events, fmt), IngestLimits(max_records=5).at(NOW)) == (
        "too_many_records"
    )
    assert (
        len(decode(encode_many(events[:5], fmt), bounds=IngestLimits(max_records=5).at(NOW)).events)
        == 5
    )


def test_run_update_shapes_are_limited_too() -> None:
    assert reason_of(update_doc(SetTags={f"k{i}": "v" for i in range(501)})) == "too_many_labels"
    assert reason_of(update_doc(RemoveTags=[f"k{i}" for i in range(501)])) == "too_many_labels"
    assert reason_of(update_doc(AddProperties={"k" * 1025: "v"})) == "too_long"
    assert reason_of(update_doc(Description="d" * 65_537)) == "too_long"
    (update,) = decode(update_doc(SetTags={"a": "b"}), bounds=BOUNDS).updates
    assert update == RunUpdate.model_validate(
        orjson.loads(update_doc(SetTags={"a": "b"}))["RunUpdate"]
    )


# --- case 5: the cost of one envelope is bounded -------------------------------------------------


def _empties_envelope(size: int) -> bytes:
    good = orjson.loads(encode(event("good"), EventFormat.RESOURCE_LOG))["records"][0]
    head = orjson.dumps({"records": [good]})[:-2]
    return head + b"," + b",".join([b"{}"] * ((size - len(head)) // 3)) + b"]}"


def test_a_megabyte_of_empty_records_costs_little_and_keeps_nothing() -> None:
    """Case 5: one good record and ~350,000 `{}` cost ~0.4 s of CPU and kept ~37 MB of
    rejection texts until the batch was written."""
    value = _empties_envelope(1_040_000)
    started = time.process_time()
    assert reason_of(value) == "too_many_records"
    assert time.process_time() - started < 0.2


def test_rejected_records_are_summarised_not_kept() -> None:
    value = _empties_envelope(14_000)  # under the 5,000-record limit
    tracemalloc.start()
    try:
        decoded = decode(value, bounds=BOUNDS)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e.RunId for e in decoded.events] == ["good"]
    assert decoded.rejected is not None
    assert decoded.rejected.count > 4000
    assert len(decoded.rejected.first) <= 5
    assert held < 100_000, held


# --- one boundary around every decoder ----------------------------------------------------------


def _boom(*args: object, **kwargs: object) -> Any:
    raise ZeroDivisionError("a bug in a decoder")


def test_any_exception_in_a_decoder_is_an_internal_decode_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decoding, "_decode_update", _boom)
    with pytest.raises(DecodeError) as caught:
        decode(update_doc(SetTags={"a": "b"}), bounds=BOUNDS)
    assert caught.value.reason == "internal"
    assert "ZeroDivisionError" in caught.value.detail


def test_an_exception_on_one_record_rejects_that_record_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = decoding.from_record

    def flaky(item: Any) -> Any:
        if item.get("properties", {}).get("RunId") == "r1":
            raise KeyError("boom")
        return real(item)

    monkeypatch.setattr(decoding, "from_record", flaky)
    value = encode_many([event(f"r{i}") for i in range(3)], EventFormat.RESOURCE_LOG)
    decoded = decode(value, bounds=BOUNDS)
    assert isinstance(decoded, Decoded)
    assert [e.RunId for e in decoded.events] == ["r0", "r2"]
    assert decoded.rejected is not None
    assert decoded.rejected.reason == "internal"
    assert "KeyError" in decoded.rejected.first[0]


def test_the_time_window_shares_the_parsed_events_tzinfo_and_still_bounds_them() -> None:
    """Each event is compared with both ends of the window: in the tzinfo object pydantic-core
    gives parsed times, the compare skips two utcoffset() calls (docs/scaling.md); the
    window still refuses what it refused, from a clock in any zone."""
    now = datetime(2026, 1, 1, 12, tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))
    bounds = IngestLimits(max_future_skew_s=60).at(now)

    def at(seconds: float) -> bytes:
        when = now + timedelta(seconds=seconds)
        return RunStatusEvent(TimeGenerated=when, RunId="r", Status="Running").to_json()

    assert bounds.latest.tzinfo is bounds.earliest.tzinfo is PARSED_UTC
    assert decode(at(0), bounds=bounds).events[0].TimeGenerated.tzinfo is PARSED_UTC
    assert bounds.latest == datetime(2026, 1, 1, 12, 1, tzinfo=UTC)
    assert bounds.earliest == datetime(2000, 1, 1, tzinfo=UTC)
    with pytest.raises(DecodeError) as refused:
        decode(at(61), bounds=bounds)
    assert refused.value.reason == "time_out_of_range"
    assert decode(at(59), bounds=bounds).events
