"""Poison messages: values that must be dead-lettered, never crash or stall a consumer.

`POISON` is a list of (name, message value, expected `DecodeError.reason`). Unit tests decode
each entry; an integration test can publish the same list to a real broker and check the
dead-letter topic's reason headers.

Decode every entry with `max_bytes=POISON_MAX_BYTES` (configure the consumer under test so):
the `oversized` entry is a valid envelope just over that limit (it decodes under the default
1 MiB one), kept small so that a broker with Kafka's default 1 MiB message limit accepts it.
A `None` value (a tombstone) is `empty` too; it is not listed because the entries are bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

POISON_MAX_BYTES = 65_536

_WORKSPACE = (
    "/SUBSCRIPTIONS/5F0C7E2A-3B1D-4C8E-9A6F-2D4B8E1C7A90/RESOURCEGROUPS/ML-PLATFORM-RG"
    "/PROVIDERS/MICROSOFT.MACHINELEARNINGSERVICES/WORKSPACES/ML-PROD"
)
_TOPIC = (
    "/subscriptions/5f0c7e2a-3b1d-4c8e-9a6f-2d4b8e1c7a90/resourceGroups/ml-platform-rg"
    "/providers/Microsoft.MachineLearningServices/workspaces/ml-prod"
)
_RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"


def _native(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "TimeGenerated": "2024-05-01T12:34:56.1234567Z",
        "RunId": "train_5f2c1a9b",
        "Status": "Failed",
        "ExperimentName": "resnet50-imagenet",
        "WorkspaceName": "ml-prod",
        "Message": "CUDA out of memory",
        "Level": "Error",
    }
    event.update(changes)
    return {key: value for key, value in event.items() if value is not ...}


def _record(**properties: Any) -> dict[str, Any]:
    bag: dict[str, Any] = {"RunId": "train_5f2c1a9b", "Status": "Running", **properties}
    return {
        "time": "2024-05-01T12:34:56.1234567Z",
        "resourceId": _WORKSPACE,
        "category": "AmlRunStatusChangedEvent",
        "operationName": "Microsoft.MachineLearningServices/workspaces/runs/statuschange/write",
        "level": "Informational",
        "properties": {key: value for key, value in bag.items() if value is not ...},
    }


def _grid(**data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "experimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
        "experimentName": "resnet50-imagenet",
        "runId": "train_5f2c1a9b",
        "runType": "azureml.scriptrun",
        "runTags": {},
        "runProperties": {},
        "runStatus": "Failed",
        **data,
    }
    return {
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "topic": _TOPIC,
        "subject": "experiments/0fa9dfaa-cba3-4fa7-b590-23e48548f5c1/runs/train_5f2c1a9b",
        "eventType": _RUN_STATUS_CHANGED,
        "eventTime": "2024-05-01T12:34:56.1234567Z",
        "data": {key: value for key, value in body.items() if value is not ...},
        "dataVersion": "2",
        "metadataVersion": "1",
    }


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _oversized() -> bytes:
    """A valid resource-log envelope, a few hundred bytes over POISON_MAX_BYTES."""
    records: list[dict[str, Any]] = []
    while len(value := _json({"records": records})) <= POISON_MAX_BYTES:
        records.append(_record(RunId=f"run_{len(records)}", Message="epoch 3: " + "x" * 400))
    return value


def _nested(depth: int) -> bytes:
    """JSON nested `depth` arrays deep: past what orjson writes (255) or reads (1024)."""
    return b"[" * depth + b'"v"' + b"]" * depth


_GOOD = _json(_native())
_TIME = "time_out_of_range"
_CLOUD_EVENT = {
    "specversion": "1.0",
    "id": "831e1650-001e-001b-66ab-eeb76e069631",
    "source": _TOPIC,
    "subject": "experiments/0fa9dfaa-cba3-4fa7-b590-23e48548f5c1/runs/train_5f2c1a9b",
    "type": _RUN_STATUS_CHANGED,
    "time": "the day before yesterday",
    "datacontenttype": "application/json",
    "data": _grid()["data"],
}

POISON: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty"),
    ("whitespace", b" \r\n\t ", "empty"),
    ("invalid_utf8", _GOOD.replace(b"train_", b"tr\xff\xfein_"), "not_utf8"),
    ("utf16_with_bom", _GOOD.decode().encode("utf-16"), "not_utf8"),
    ("utf16le_without_bom", _GOOD.decode().encode("utf-16-le"), "not_utf8"),
    ("truncated_json", _GOOD[: len(_GOOD) // 2], "not_json"),
    ("two_objects_ndjson", _GOOD + b"\n" + _GOOD, "not_json"),
    ("nan_literal", _GOOD[:-1] + b',"DurationMs":NaN}', "not_json"),
    ("infinity_in_tags", _GOOD[:-1] + b',"Tags":{"loss":-Infinity}}', "not_json"),
    ("lone_surrogate", _GOOD.replace(b"CUDA", b"\\ud800CUDA"), "not_json"),
    ("array_of_numbers", b"[1, 2, 3]", "unknown_shape"),
    ("empty_array", b"[]", "unknown_shape"),
    ("json_string", b'"Failed"', "unknown_shape"),
    ("json_null", b"null", "unknown_shape"),
    ("object_without_known_keys", b'{"hello": "world", "count": 3}', "unknown_shape"),
    ("records_not_a_list", _json({"records": _record()}), "unknown_shape"),
    ("record_without_envelope", _json(_record()), "unknown_shape"),
    (
        "envelope_run_record_without_runid",
        _json({"records": [_record(RunId=...)]}),
        "no_valid_records",
    ),
    ("envelope_records_not_objects", b'{"records": [1, "two", null]}', "no_valid_records"),
    (
        "envelope_unknown_level",
        _json({"records": [{**_record(), "level": "Verbose"}]}),
        "no_valid_records",
    ),
    ("bad_time_generated", _json(_native(TimeGenerated="yesterday")), "schema"),
    ("unknown_status", _json(_native(Status="Boom")), "schema"),
    ("runid_is_a_number", _json(_native(RunId=12345)), "schema"),
    ("runid_is_empty", _json(_native(RunId="")), "schema"),
    ("tags_not_an_object", _json(_native(Tags=["gpu", "a100"])), "schema"),
    ("eventgrid_without_runid", _json(_grid(runId=...)), "schema"),
    ("eventgrid_without_data", _json({k: v for k, v in _grid().items() if k != "data"}), "schema"),
    ("cloudevent_bad_time", _json(_CLOUD_EVENT), "schema"),
    ("eventgrid_array_all_invalid", _json([_grid(runStatus="Exploded"), 7]), "no_valid_records"),
    ("oversized", _oversized(), "too_large"),
    # Issue 12: each of these stopped, stalled or misled a running consumer.
    ("time_before_utc", _json(_native(TimeGenerated="0001-01-01T00:00:00+01:00")), _TIME),
    ("time_after_utc", _json(_native(TimeGenerated="9999-12-31T23:30:00-01:00")), _TIME),
    (
        "run_update_time_after_utc",
        _json({"RunUpdate": {"TimeGenerated": "9999-12-31T23:30:00-01:00", "RunId": "r"}}),
        _TIME,
    ),
    ("completed_in_year_9999", _json(_native(TimeGenerated="9999-12-31T00:00:00Z")), _TIME),
    ("epoch_zero", _json(_native(TimeGenerated="1970-01-01T00:00:00Z")), _TIME),
    ("grid_time_before_utc", _json({**_grid(), "eventTime": "0001-01-01T00:00:00+01:00"}), _TIME),
    ("tag_nested_300_deep", _GOOD[:-1] + b',"Tags":{"t":' + _nested(300) + b"}}", "too_deep"),
    ("json_nested_2000_deep", b'{"records":' + _nested(2000) + b"}", "too_deep"),
    (
        "tag_number_past_a_double",
        _GOOD[:-1] + b',"Tags":{"t":[[[1e999999]]]}}',
        "not_json",
    ),
    (
        "six_hundred_tags",
        _json(_native(Tags={f"t{i}": "v" for i in range(600)})),
        "too_many_labels",
    ),
    ("tag_key_of_2000_chars", _json(_native(Tags={"k" * 2000: "v"})), "too_long"),
    (
        "envelope_of_empty_records",
        _json({"records": [_record()] + [{}] * 5001}),
        "too_many_records",
    ),
    (
        "duration_past_64_bits",
        _GOOD[:-1] + b',"DurationMs":123456789012345678901234567890}',
        "schema",
    ),
]
