"""Issue 15, done-when: `runs list` shows the same fields for all formats. One step run's Failed
event is published in each of the seven input shapes (one run id per shape), ingested through
the real broker, and what `runwatch runs list -o json` and `runs show -o json` print for each
is compared with the native one, field by field.

What a format cannot carry is named, and must come back empty rather than wrong:
- Event Grid and CloudEvents (RunStatusChanged `data` per event-schema-machine-learning.md):
  no parent or root run, no workspace id, no triggering user, no message.
- Log Analytics rows (query responses and data exports; the table's documented columns,
  tests/samples/azure/amlrunstatuschangedevent.columns.json): no ExperimentName, ExperimentId,
  RunType, Tags or Properties column.
The query response and data export are built by our encoder in the shape of the constructed
samples (tests/samples/azure/); the two CloudEvents messages are made by the official SDK.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from tests.conftest import RUNWATCH, RunningService, Topics, wait_for

COLUMNS = Path(__file__).resolve().parent / "samples/azure/amlrunstatuschangedevent.columns.json"
GRID_CANNOT = {"parentRunId", "rootRunId", "workspaceId", "triggeringUserName", "message"}
TABLE_CANNOT = {"experimentName", "experimentId", "runType", "tags", "properties"}
CANNOT: dict[str, set[str]] = {
    "native": set(),
    "resource-log": set(),
    "event-grid": GRID_CANNOT,
    "cloudevents-structured": GRID_CANNOT,
    "cloudevents-binary": GRID_CANNOT,
    "log-analytics-query": TABLE_CANNOT,
    "log-analytics-export": TABLE_CANNOT,
}
Message = tuple[bytes, list[tuple[str, bytes]]]


def step_run(run_id: str, time: datetime) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "TimeGenerated": time,
            "RunId": run_id,
            "Status": "Failed",
            "ParentRunId": "pipeline-7",
            "RootRunId": "pipeline-7",
            "ExperimentName": "resnet50-imagenet",
            "ExperimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
            "WorkspaceName": "ml-prod",
            "WorkspaceId": "a1b2c3d4-0000-1111-2222-333344445555",
            "Message": "CUDA out of memory",
            "Level": "Error",
            "TriggeringUserName": "Ada Lovelace",
            "RunType": "azureml.StepRun",
            "DurationMs": 1532,
            "Tags": {"team": "vision", "quality": None},
            "Properties": {"author": "azureml-user"},
        }
    )


def query_response(event: RunStatusEvent) -> bytes:
    """A query API response with every documented column, in the reference's order."""
    row = orjson.loads(encode(event, EventFormat.LOG_ANALYTICS))["records"][0]
    row |= {"_BilledSize": 1173.0, "_IsBillable": "True"}
    columns = json.loads(COLUMNS.read_text())["columns"]
    table = {
        "name": "PrimaryResult",
        "columns": [{"name": c["name"], "type": c["type"]} for c in columns],
        "rows": [[row[c["name"]] for c in columns]],
    }
    return orjson.dumps({"tables": [table]})


def sdk_cloudevent(event: RunStatusEvent, *, binary: bool) -> Message:
    """Our CloudEvents encoding's attributes and data, made into a Kafka message by the SDK."""
    from cloudevents.core.bindings import kafka
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    structured = orjson.loads(encode(event, EventFormat.CLOUDEVENTS))
    data = structured.pop("data")
    made = CloudEvent({**structured, "time": event.TimeGenerated}, data)
    message = (kafka.to_binary if binary else kafka.to_structured)(made, JSONFormat())
    value = message.value if isinstance(message.value, bytes) else str(message.value).encode()
    return value, list(message.headers.items())


def messages(time: datetime) -> dict[str, Message]:
    def run(name: str) -> RunStatusEvent:
        return step_run(f"step-{name}", time)

    return {
        "native": (encode(run("native"), EventFormat.NATIVE), []),
        "resource-log": (encode(run("resource-log"), EventFormat.RESOURCE_LOG), []),
        "event-grid": (encode(run("event-grid"), EventFormat.EVENT_GRID), []),
        "cloudevents-structured": sdk_cloudevent(run("cloudevents-structured"), binary=False),
        "cloudevents-binary": sdk_cloudevent(run("cloudevents-binary"), binary=True),
        "log-analytics-query": (query_response(run("log-analytics-query")), []),
        "log-analytics-export": (
            encode(run("log-analytics-export"), EventFormat.LOG_ANALYTICS),
            [],
        ),
    }


def cli(*args: str) -> Any:
    done = subprocess.run([RUNWATCH, *args], capture_output=True, check=True, timeout=60)
    return orjson.loads(done.stdout)


def test_runs_list_and_show_print_the_same_fields_for_every_format(
    topics: Topics, service: Callable[..., RunningService], store_url: str
) -> None:
    time = datetime.now(UTC).replace(microsecond=250000) - timedelta(minutes=2)
    made = messages(time)
    assert any(name == "ce_specversion" for name, _ in made["cloudevents-binary"][1])
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    for value, headers in made.values():
        producer.send(topics.topic, value=value, headers=headers)
    producer.flush()
    producer.close()
    with service():
        wait_for(
            lambda: len(cli("runs", "list", "--store", store_url, "-o", "json")) == len(made),
            timeout=60,
        )
    listed = {r["runId"]: r for r in cli("runs", "list", "--store", store_url, "-o", "json")}
    shown = {
        name: cli("runs", "show", f"step-{name}", "--store", store_url, "-o", "json")
        for name in made
    }

    def comparable(record: dict[str, Any], name: str) -> dict[str, Any]:
        # Without the message, the cause is unknown (checked below), never another one.
        blind = {"cause"} if "message" in CANNOT[name] else set()
        return {
            k: v
            for k, v in record.items()
            if k != "runId" and k not in CANNOT[name] and k not in blind
        }

    native = listed["step-native"]
    assert native["parentRunId"] == "pipeline-7"
    assert native["tags"] == {"team": "vision", "quality": None}
    assert native["status"] == "Failed"
    assert native["cause"] == "cuda_oom"
    for name in made:
        record = listed[f"step-{name}"]
        assert record["cause"] == ("unknown" if "message" in CANNOT[name] else "cuda_oom"), name
        assert comparable(record, name) == comparable(native, name), name
        for field in CANNOT[name]:  # absent, never a wrong value
            assert record[field] in (None, {}), (name, field, record[field])
        detail = shown[name]
        assert comparable(detail["run"], name) == comparable(shown["native"]["run"], name)
        assert detail["children"] == []
        timeline = [
            {k: v for k, v in entry.items() if not (k == "message" and "message" in CANNOT[name])}
            for entry in detail["timeline"]
        ]
        expected = [
            {k: v for k, v in entry.items() if not (k == "message" and "message" in CANNOT[name])}
            for entry in shown["native"]["timeline"]
        ]
        assert timeline == expected, name
