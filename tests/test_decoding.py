"""Unit tests of decoding (three input formats -> run events) and of its inverse, encoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from consumers.ingest.decoding import Decoded, EventFormat, Rejected, decode
from consumers.ingest.encoding import ROUND_TRIP, RUN_STATUS_OPERATION, encode, encode_many
from consumers.model.errors import DecodeError
from consumers.model.events import RunStatusEvent
from consumers.telemetry.metrics import DEAD_LETTER_REASONS
from tests.poison import POISON, POISON_MAX_BYTES

T0 = datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=UTC)
WORKSPACE_ID = (
    "/SUBSCRIPTIONS/5F0C7E2A-3B1D-4C8E-9A6F-2D4B8E1C7A90/RESOURCEGROUPS/ML-PLATFORM-RG"
    "/PROVIDERS/MICROSOFT.MACHINELEARNINGSERVICES/WORKSPACES/ML-PROD"
)
TOPIC = (
    "/subscriptions/5f0c7e2a-3b1d-4c8e-9a6f-2d4b8e1c7a90/resourceGroups/ml-platform-rg"
    "/providers/Microsoft.MachineLearningServices/workspaces/ml-prod"
)
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"


def full_event(index: int = 0, **changes: Any) -> RunStatusEvent:
    """An event with every column set, so a round trip has something to lose."""
    values: dict[str, Any] = {
        "TimeGenerated": T0 + timedelta(seconds=index),
        "RunId": f"train_5f2c1a9b_{index}",
        "Status": "Failed",
        "ParentRunId": "pipeline_1",
        "RootRunId": "pipeline_1",
        "ExperimentName": "resnet50-imagenet",
        "ExperimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
        "WorkspaceName": "ml-prod",
        "WorkspaceId": "a1b2c3d4-0000-1111-2222-333344445555",
        "Message": "CUDA out of memory",
        "Level": "Error",
        "OperationName": RUN_STATUS_OPERATION,
        "CorrelationId": "831e1650-001e-001b-66ab-eeb76e069631",
        "Identity": "azureml-user@contoso.com",
        "TriggeringUserName": "Azure ML User",
        "CallerIpAddress": "10.0.0.4",
        "DurationMs": 1500,
        "Location": "westeurope",
        "ResultType": "Failed",
        "ResultSignature": "500",
        "ResultDescription": "run failed",
        "RunType": "azureml.scriptrun",
        "Tags": {"team": "vision", "quality": None},
        "Properties": {"author": "azureml-user"},
        "ResourceId": "/subscriptions/5f0c7e2a-3b1d-4c8e-9a6f-2d4b8e1c7a90/resourceGroups/"
        "ml-platform-rg/providers/Microsoft.MachineLearningServices/workspaces/ml-prod",
    }
    values.update(changes)
    return RunStatusEvent.model_validate(values)


def only(decoded: Decoded) -> RunStatusEvent:
    assert len(decoded.events) == 1, decoded
    return decoded.events[0]


def record(**overrides: Any) -> dict[str, Any]:
    """A resource-log record as diagnostic settings stream it to Event Hubs."""
    value: dict[str, Any] = {
        "time": "2024-05-01T12:34:56.1234567Z",
        "resourceId": WORKSPACE_ID,
        "category": "AmlRunStatusChangedEvent",
        "operationName": RUN_STATUS_OPERATION,
        "level": "Informational",
        "resultType": "Succeeded",
        "durationMs": 0,
        "correlationId": "6a2e7a5e-0c5b-4c1e-8a37-1d5d6c7e8f90",
        "location": "westeurope",
        "properties": {
            "RunId": "train_1",
            "Status": "Running",
            "ExperimentName": "resnet50-imagenet",
            "WorkspaceName": "ml-prod",
        },
    }
    value.update(overrides)
    return value


def grid_event(**overrides: Any) -> dict[str, Any]:
    """Azure's documented RunStatusChanged example, Event Grid schema."""
    value: dict[str, Any] = {
        "topic": TOPIC,
        "subject": "experiments/0fa9dfaa-cba3-4fa7-b590-23e48548f5c1/runs/AutoML_ad912b2d_5",
        "eventType": RUN_STATUS_CHANGED,
        "eventTime": "2017-06-26T18:41:00.9584103Z",
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "data": {
            "ExperimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
            "ExperimentName": "automl-local-regression",
            "RunId": "AutoML_ad912b2d_5",
            "RunType": None,
            "RunTags": {},
            "RunProperties": {"runTemplate": "automl_child", "pipeline_id": "5adc0a4f"},
            "RunStatus": "Running",
        },
        "dataVersion": "2",
        "metadataVersion": "1",
    }
    value.update(overrides)
    return value


def cloud_event(**overrides: Any) -> dict[str, Any]:
    grid = grid_event()
    value: dict[str, Any] = {
        "specversion": "1.0",
        "id": grid["id"],
        "source": grid["topic"],
        "subject": grid["subject"],
        "type": RUN_STATUS_CHANGED,
        "time": grid["eventTime"],
        "datacontenttype": "application/json",
        "data": grid["data"],
    }
    value.update(overrides)
    return value


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# --- native -----------------------------------------------------------------------------------


def test_native_log_analytics_row_decodes_and_extra_columns_are_ignored() -> None:
    row = {
        "TenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "TimeGenerated": "2024-05-01T12:34:56.1234567Z",
        "RunId": "train_1",
        "Status": "failed",
        "Level": "error",
        "Message": "CUDA out of memory",
        "SourceSystem": "Azure",
        "Type": "AmlRunStatusChangedEvent",
        "_ResourceId": WORKSPACE_ID.lower(),
    }
    decoded = decode(dumps(row))
    assert decoded.format is EventFormat.NATIVE
    assert (decoded.skipped, decoded.rejected) == (0, None)
    event = only(decoded)
    assert (event.RunId, event.Status, event.Level) == ("train_1", "Failed", "Error")
    assert event.TimeGenerated == datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=UTC)


def test_native_fast_path_result_equals_a_constructed_decoded() -> None:
    event = full_event()
    assert decode(event.to_json()) == Decoded(EventFormat.NATIVE, (event,))


@pytest.mark.parametrize(
    "value",
    [
        b"  \n" + full_event().to_json(),
        b"\xef\xbb\xbf" + full_event().to_json(),  # a UTF-8 byte order mark
        dumps({"Type": "AmlRunStatusChangedEvent", **orjson.loads(full_event().to_json())}),
        dumps({key.lower(): value for key, value in orjson.loads(full_event().to_json()).items()}),
        dumps({key.upper(): value for key, value in orjson.loads(full_event().to_json()).items()}),
    ],
    ids=["leading-whitespace", "utf8-bom", "foreign-first-key", "lowercase-keys", "uppercase-keys"],
)
def test_native_slow_path_gives_the_same_event(value: bytes) -> None:
    decoded = decode(value)
    assert decoded.format is EventFormat.NATIVE
    assert only(decoded) == full_event()


def test_native_exact_column_name_wins_over_other_spellings() -> None:
    value = {"TimeGenerated": "2024-05-01T00:00:00Z", "RunId": "exact", "runid": "lower"}
    value["Status"] = "Running"
    value["extra"] = "NaN is only text here"  # forces the orjson path
    assert only(decode(dumps(value))).RunId == "exact"


def test_nan_inside_a_string_is_fine() -> None:
    event = full_event(Message="loss became NaN, then Infinity")
    assert only(decode(event.to_json())) == event


# --- resource-log envelope --------------------------------------------------------------------


def test_resource_log_record_maps_to_columns() -> None:
    decoded = decode(dumps({"records": [record()]}))
    assert decoded.format is EventFormat.RESOURCE_LOG
    event = only(decoded)
    assert event.TimeGenerated == datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=UTC)
    assert (event.RunId, event.Status, event.WorkspaceName) == ("train_1", "Running", "ml-prod")
    assert event.OperationName == RUN_STATUS_OPERATION
    assert (event.Level, event.ResultType, event.DurationMs) == ("Informational", "Succeeded", 0)
    assert (event.CorrelationId, event.Location) == (
        "6a2e7a5e-0c5b-4c1e-8a37-1d5d6c7e8f90",
        "westeurope",
    )


def test_fifty_record_envelope_gives_fifty_events_in_order() -> None:
    records = [
        record(properties={"RunId": f"run_{i}", "Status": "Completed" if i % 2 else "Running"})
        for i in range(50)
    ]
    decoded = decode(dumps({"records": records}))
    assert len(decoded.events) == 50
    assert [e.RunId for e in decoded.events] == [f"run_{i}" for i in range(50)]
    assert (decoded.skipped, decoded.rejected) == (0, None)


def test_resource_log_keys_match_case_insensitively() -> None:
    shouting = {
        "TIME": "2024-05-01T12:34:56Z",
        "ResourceID": WORKSPACE_ID,
        "Category": "AMLRUNSTATUSCHANGEDEVENT",
        "OperationName": "op",
        "Level": "warning",
        "Properties": {"RUNID": "run_a", "status": "COMPLETED", "experimentname": "exp"},
    }
    camel = record(properties={"runId": "run_b", "sTaTuS": "queued", "parentRunId": "run_a"})
    decoded = decode(dumps({"Records": [shouting, camel]}))
    first, second = decoded.events
    assert (first.RunId, first.Status, first.Level, first.ExperimentName) == (
        "run_a",
        "Completed",
        "Warning",
        "exp",
    )
    assert (second.RunId, second.Status, second.ParentRunId) == ("run_b", "Queued", "run_a")


def test_other_categories_are_skipped_and_counted() -> None:
    others = [
        record(category="AmlComputeClusterEvent", properties={"ClusterName": "gpu"}),
        record(category="AmlRunEvent", properties={"RunId": "x"}),
        record(category="AmlComputeJobEvent"),
    ]
    decoded = decode(dumps({"records": [others[0], record(), *others[1:]]}))
    assert [e.RunId for e in decoded.events] == ["train_1"]
    assert (decoded.skipped, decoded.rejected) == (3, None)


def test_envelope_of_only_other_categories_is_not_an_error() -> None:
    decoded = decode(dumps({"records": [record(category="AmlComputeClusterEvent")]}))
    assert (decoded.format, decoded.events, decoded.skipped) == (EventFormat.RESOURCE_LOG, (), 1)


def test_properties_may_be_a_json_string() -> None:
    bag = {"RunId": "train_1", "Status": "Failed", "Tags": '{"team": "vision"}'}
    event = only(decode(dumps({"records": [record(properties=orjson.dumps(bag).decode())]})))
    assert (event.RunId, event.Status, event.Tags) == ("train_1", "Failed", {"team": "vision"})


def test_workspace_name_comes_from_resource_id_when_absent() -> None:
    event = only(
        decode(dumps({"records": [record(properties={"RunId": "r", "Status": "Queued"})]}))
    )
    assert event.WorkspaceName == "ML-PROD"
    named = record(properties={"RunId": "r", "Status": "Queued", "WorkspaceName": "ml-prod"})
    assert only(decode(dumps({"records": [named]}))).WorkspaceName == "ml-prod"


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("Informational", "Informational"),
        ("Error", "Error"),
        ("Warning", "Warning"),
        ("critical", "Critical"),
        ("Information", "Informational"),
        ("2", "Error"),
        (3, "Warning"),
        (4, "Informational"),
    ],
)
def test_resource_log_levels(level: object, expected: str) -> None:
    assert only(decode(dumps({"records": [record(level=level)]}))).Level == expected


def test_azure_value_spellings_are_accepted() -> None:
    """Numbers and objects in string columns become their JSON text, as Log Analytics does."""
    value = record(
        resultSignature=200,
        durationMs="150",
        identity={"claims": {"upn": "azureml-user@contoso.com"}},
    )
    event = only(decode(dumps({"records": [value]})))
    assert (event.ResultSignature, event.DurationMs) == ("200", 150)
    assert event.Identity == '{"claims":{"upn":"azureml-user@contoso.com"}}'


def test_partial_rejection_keeps_the_good_records() -> None:
    records = [
        record(),
        record(properties={"RunId": "bad_status", "Status": "Boom"}),
        record(properties={"Status": "Running"}),
        42,
        record(time="yesterday"),
        record(level="Verbose"),
        record(properties={"RunId": "good_2", "Status": "Completed"}),
        {"time": "2024-05-01T00:00:00Z", "properties": {"RunId": "r", "Status": "Queued"}},
    ]
    decoded = decode(dumps({"records": records}))
    assert [e.RunId for e in decoded.events] == ["train_1", "good_2"]
    # Six bad records: counted, the first five kept (never one text per record).
    assert decoded.rejected == Rejected(
        6,
        "schema",
        (
            "records[1]: Status: unknown status 'Boom'",
            "records[2]: RunId: Field required",
            "records[3]: not an object but a JSON number",
            "records[4]: TimeGenerated: Input should be a valid datetime or date, input is too "
            "short",
            "records[5]: Level: unknown level 'Verbose'",
        ),
    )


# --- Event Grid and CloudEvents ---------------------------------------------------------------


def test_event_grid_single_event() -> None:
    decoded = decode(dumps(grid_event()))
    assert decoded.format is EventFormat.EVENT_GRID
    event = only(decoded)
    assert (event.RunId, event.Status, event.Level) == (
        "AutoML_ad912b2d_5",
        "Running",
        "Informational",
    )
    assert (event.ExperimentName, event.WorkspaceName) == ("automl-local-regression", "ml-prod")
    assert event.TimeGenerated == datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC)
    assert (event.OperationName, event.CorrelationId) == (
        RUN_STATUS_CHANGED,
        "831e1650-001e-001b-66ab-eeb76e069631",
    )
    assert event.Properties == {"runTemplate": "automl_child", "pipeline_id": "5adc0a4f"}


def test_event_grid_failed_status_is_an_error_level() -> None:
    data = {"runId": "r", "runStatus": "failed", "runTags": {"gpu": "a100"}}
    event = only(decode(dumps(grid_event(data=data))))
    assert (event.Status, event.Level, event.Tags) == ("Failed", "Error", {"gpu": "a100"})


def test_event_grid_array_with_validation_and_other_types_skipped() -> None:
    events = [
        grid_event(),
        grid_event(
            eventType="Microsoft.EventGrid.SubscriptionValidationEvent",
            data={"validationCode": "x"},
        ),
        grid_event(eventType="Microsoft.MachineLearningServices.RunCompleted"),
        grid_event(data={"runId": "second", "runStatus": "Completed"}),
        grid_event(eventType="Microsoft.MachineLearningServices.ModelRegistered"),
    ]
    decoded = decode(dumps(events))
    assert decoded.format is EventFormat.EVENT_GRID
    assert [e.RunId for e in decoded.events] == ["AutoML_ad912b2d_5", "second"]
    assert (decoded.skipped, decoded.rejected) == (3, None)


def test_single_event_of_another_type_is_skipped() -> None:
    decoded = decode(dumps(grid_event(eventType="Microsoft.MachineLearningServices.RunCompleted")))
    assert (decoded.format, decoded.events, decoded.skipped) == (EventFormat.EVENT_GRID, (), 1)


def test_cloudevents_single_and_array() -> None:
    single = decode(dumps(cloud_event()))
    assert single.format is EventFormat.CLOUDEVENTS
    assert only(single) == only(decode(dumps(grid_event())))
    array = decode(dumps([cloud_event(), cloud_event(data={"runId": "b", "runStatus": "Queued"})]))
    assert array.format is EventFormat.CLOUDEVENTS
    assert [e.RunId for e in array.events] == ["AutoML_ad912b2d_5", "b"]


def test_cloudevent_data_may_be_json_text() -> None:
    text = orjson.dumps({"runId": "r", "runStatus": "Starting"}).decode()
    assert only(decode(dumps(cloud_event(data=text)))).Status == "Starting"


def test_event_grid_keys_match_case_insensitively() -> None:
    shouting = {key.upper(): value for key, value in grid_event().items()}
    shouting["DATA"] = {"RUNID": "r", "RUNSTATUS": "CANCELED", "EXPERIMENTNAME": "exp"}
    event = only(decode(dumps(shouting)))
    assert (event.RunId, event.Status, event.ExperimentName, event.WorkspaceName) == (
        "r",
        "Canceled",
        "exp",
        "ml-prod",
    )


def test_array_mixing_formats_rejects_the_odd_entries() -> None:
    decoded = decode(
        dumps([grid_event(), cloud_event(), 3, {"hello": "world"}, grid_event(data={})])
    )
    assert decoded.format is EventFormat.EVENT_GRID
    assert len(decoded.events) == 1
    assert decoded.rejected is not None
    assert decoded.rejected.first == (
        "[1]: a CloudEvent among event-grid events",
        "[2]: a JSON number that is not an event",
        "[3]: a JSON object that is not an event",
        "[4]: RunId: Field required; Status: Field required",
    )


# --- encoding and round trips -----------------------------------------------------------------


def assert_round_trip(original: RunStatusEvent, decoded: RunStatusEvent, fmt: EventFormat) -> None:
    for column in sorted(ROUND_TRIP[fmt]):
        assert getattr(decoded, column) == getattr(original, column), column


@pytest.mark.parametrize("fmt", list(EventFormat))
def test_round_trip_single(fmt: EventFormat) -> None:
    original = full_event()
    decoded = decode(encode(original, fmt))
    assert decoded.format is fmt
    assert_round_trip(original, only(decoded), fmt)


@pytest.mark.parametrize("fmt", [EventFormat.NATIVE, EventFormat.RESOURCE_LOG])
def test_native_and_resource_log_carry_every_column(fmt: EventFormat) -> None:
    original = full_event()
    assert only(decode(encode(original, fmt))) == original


@pytest.mark.parametrize("fmt", [f for f in EventFormat if f is not EventFormat.NATIVE])
def test_round_trip_many(fmt: EventFormat) -> None:
    originals = [full_event(i, Status=s) for i, s in enumerate(["Queued", "Running", "Failed"])]
    decoded = decode(encode_many(originals, fmt))
    assert decoded.format is fmt
    assert len(decoded.events) == 3
    for original, event in zip(originals, decoded.events, strict=True):
        assert_round_trip(original, event, fmt)


@pytest.mark.parametrize("fmt", list(EventFormat))
def test_round_trip_of_a_minimal_event(fmt: EventFormat) -> None:
    original = RunStatusEvent(TimeGenerated=T0, RunId="r", Status="Queued")
    assert_round_trip(original, only(decode(encode(original, fmt))), fmt)


def test_what_event_grid_derives() -> None:
    minimal = RunStatusEvent(TimeGenerated=T0, RunId="r", Status="Failed", Level="Critical")
    event = only(decode(encode(minimal, EventFormat.EVENT_GRID)))
    assert (event.Level, event.OperationName) == ("Error", RUN_STATUS_CHANGED)
    assert event.CorrelationId  # a derived id, stable across encodings
    assert encode(minimal, EventFormat.EVENT_GRID) == encode(minimal, EventFormat.EVENT_GRID)
    assert event.WorkspaceName is None


def test_resource_log_fills_a_missing_operation_name() -> None:
    minimal = RunStatusEvent(TimeGenerated=T0, RunId="r", Status="Queued")
    assert (
        only(decode(encode(minimal, EventFormat.RESOURCE_LOG))).OperationName
        == RUN_STATUS_OPERATION
    )


def test_encoded_shapes_look_like_azure() -> None:
    # Without an ARM ID of its own, the encoder makes one from the workspace, as Azure writes it.
    envelope = orjson.loads(encode(full_event(ResourceId=None), EventFormat.RESOURCE_LOG))
    (rec,) = envelope["records"]
    assert rec["category"] == "AmlRunStatusChangedEvent"
    assert rec["time"] == "2024-05-01T12:34:56.1234560Z"
    assert rec["resourceId"].startswith("/SUBSCRIPTIONS/")
    assert rec["resourceId"].endswith(
        "/PROVIDERS/MICROSOFT.MACHINELEARNINGSERVICES/WORKSPACES/ML-PROD"
    )
    grid = orjson.loads(encode(full_event(), EventFormat.EVENT_GRID))
    assert set(grid) == {
        "id",
        "topic",
        "subject",
        "eventType",
        "eventTime",
        "data",
        "dataVersion",
        "metadataVersion",
    }
    assert set(grid["data"]) == {
        "experimentId",
        "experimentName",
        "runId",
        "runType",
        "runTags",
        "runProperties",
        "runStatus",
    }
    cloud = orjson.loads(encode(full_event(), EventFormat.CLOUDEVENTS))
    assert cloud["specversion"] == "1.0"
    assert cloud["source"].endswith(
        "/providers/Microsoft.MachineLearningServices/workspaces/ml-prod"
    )


def test_encode_many_native_takes_exactly_one() -> None:
    assert encode_many([full_event()], EventFormat.NATIVE) == full_event().to_json()
    with pytest.raises(ValueError, match="one event"):
        encode_many([full_event(0), full_event(1)], EventFormat.NATIVE)
    with pytest.raises(ValueError, match="no events"):
        encode_many([], EventFormat.RESOURCE_LOG)


# --- poison -----------------------------------------------------------------------------------


def test_poison_catalogue_is_broad_and_distinct() -> None:
    names = [name for name, _, _ in POISON]
    values = [value for _, value, _ in POISON]
    assert len(POISON) >= 14
    assert len(set(names)) == len(names)
    assert len(set(values)) == len(values)
    reasons = {reason for _, _, reason in POISON}
    # every reason decoding can give has a sample (the other two come from the pipeline)
    assert reasons == set(DEAD_LETTER_REASONS) - {"internal", "store_rejected"}


@pytest.mark.parametrize(("name", "value", "reason"), POISON, ids=[name for name, _, _ in POISON])
def test_poison_is_rejected_with_its_reason(name: str, value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(value, max_bytes=POISON_MAX_BYTES)
    assert caught.value.reason == reason, caught.value.detail
    assert 0 < len(caught.value.detail) <= 500
    assert not caught.value.retriable


def test_none_is_empty() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(None)
    assert caught.value.reason == "empty"


def test_size_is_checked_before_parsing() -> None:
    oversized = next(value for name, value, _ in POISON if name == "oversized")
    assert len(decode(oversized).events) > 50  # valid under the default 1 MiB limit
    with pytest.raises(DecodeError) as caught:
        decode(b"{" * (1_048_576 + 1))
    assert caught.value.reason == "too_large"


def test_details_stay_short_whatever_the_input() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(
            dumps({"TimeGenerated": "2024-05-01T00:00:00Z", "RunId": "r", "Status": "x" * 60_000})
        )
    assert caught.value.reason == "schema"
    assert len(caught.value.detail) <= 500
    records = [record(properties={"RunId": "r", "Status": "y" * 60_000})] * 3
    with pytest.raises(DecodeError) as batch:
        decode(dumps({"records": records}))
    assert batch.value.reason == "no_valid_records"
    assert len(batch.value.detail) <= 500
