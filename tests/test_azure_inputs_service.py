"""Issue 15 items 1-3 end to end: Log Analytics rows, a workspace data export and CloudEvents
made by the official SDK (both modes) go through the real broker into the store, and the
shipped rules judge a root run's failure from a Log Analytics row right.

Samples (tests/samples/README.md records their sources): azure/log-analytics-rows.json,
azure/log-analytics-query-response.json and azure/workspace-data-export.eventhub.json are
CONSTRUCTED from the documented column list and response/export formats (no published rows
of this table exist); the CloudEvents messages are made here, live, by the `cloudevents` SDK
(2.x; its old API `cloudevents.v1.kafka` and its new one `cloudevents.core.bindings.kafka`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from sqlalchemy import select

from consumers.config.settings import Settings, shipped
from consumers.store import Store
from consumers.store.schema import dead_letters, events, notifications, runs
from tests.conftest import RunningService, Topics, wait_for
from tests.servers import HttpServer, SmtpServer

SAMPLES = Path(__file__).resolve().parent / "samples"
ROOT_RUN = "train-resnet_1715678400_4f2a"
PIPELINE = "pipeline_1715678400_77c1"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"


def sample_rows() -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = json.loads(
        (SAMPLES / "azure/log-analytics-rows.json").read_text()
    )
    return value


def produce(topics: Topics, messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    """(value, headers) pairs, as kafka-python sends headers: a list of (str, bytes)."""
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    for value, headers in messages:
        producer.send(topics.topic, value=value, headers=headers)
    producer.flush()
    producer.close()


def rows_of(store: Store, table: Any) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(table)))


@pytest.fixture
def shipped_rules_service(
    topics: Topics, store_url: str, smtp: SmtpServer, http: HttpServer
) -> Iterator[RunningService]:
    """The shipped rule set (alert_rules/runs.yaml) with its two receivers. The sample rows are
    from 2024: the replay horizon is off so that their alerts are sent, not marked stale."""
    settings = Settings.model_validate(
        {
            "kafka": topics.kafka_settings().model_dump(),
            "store": {"url": store_url},
            "metrics": {"listen": "127.0.0.1:0"},
            "rules_dir": str(shipped("alert_rules")),
            "smtp": {"host": "127.0.0.1", "port": smtp.port},
            "receivers": {
                "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
                "chat": {"webhook": {"url": http.url("/chat")}},
            },
            "evaluation": {"replay_horizon_s": None},
        }
    )
    with RunningService(settings) as running:
        yield running


def test_a_root_runs_failure_from_log_analytics_raises_run_failed_not_step_failed(
    shipped_rules_service: RunningService,
    topics: Topics,
    store: Store,
    smtp: SmtpServer,
    http: HttpServer,
) -> None:
    """Issue 15, seen 1: `ParentRunId: ""` was stored as "", so `ParentRunId == null`
    (run-failed) missed the root run's failure and `ParentRunId != null` (step-failed) fired.
    A failed step (the sample's Running step row, its Status changed to Failed) still raises
    step-failed."""
    root, _, step = sample_rows()
    assert (root["RunId"], root["ParentRunId"], root["Status"]) == (ROOT_RUN, "", "Failed")
    failed_step = {**step, "Status": "Failed", "Level": "Error", "Message": "exit code 1"}
    produce(topics, [(orjson.dumps(root), []), (orjson.dumps(failed_step), [])])
    wait_for(lambda: len(rows_of(store, notifications)) >= 3)
    wait_for(lambda: len(smtp.mails) == 1 and len(http.on("/chat")) == 2)
    fired = sorted((n.rule, n.run_id, n.receiver) for n in rows_of(store, notifications))
    assert fired == [
        ("run-failed", ROOT_RUN, "chat"),
        ("run-failed", ROOT_RUN, "ml-oncall"),
        ("step-failed", step["RunId"], "chat"),
    ]
    stored = {row.RunId: row for row in rows_of(store, events)}
    assert stored[ROOT_RUN].ParentRunId is None
    assert stored[ROOT_RUN].DurationMs is None
    assert ROOT_RUN in smtp.mails[0].message["Subject"]


def test_a_data_export_and_a_query_response_are_stored_once(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    """Issue 15, seen 2: the data export was dead-lettered (`no_valid_records ... category:
    missing`). The same three rows as a query response are the same events: no new rows."""
    export = (SAMPLES / "azure/workspace-data-export.eventhub.json").read_bytes()
    response = (SAMPLES / "azure/log-analytics-query-response.json").read_bytes()
    produce(topics, [(export, []), (response, [])])
    with service() as running:
        wait_for(lambda: running.metric("runwatch_events_duplicate_total") == 3)
        counted = running.metric("runwatch_events_total", format="log-analytics", status="Failed")
        assert counted == 2
    assert rows_of(store, dead_letters) == []
    stored = {row.RunId: row for row in rows_of(store, runs)}
    assert set(stored) == {row["RunId"] for row in sample_rows()}
    assert stored[ROOT_RUN].ParentRunId is None
    assert stored["prep-data_1715678403_0d9e"].RootRunId == PIPELINE
    durations = {row.RunId: row.DurationMs for row in rows_of(store, events)}
    assert durations["prep-data_1715678403_0d9e"] == 1532


def sdk_messages(
    run_prefix: str, time: datetime
) -> dict[str, tuple[bytes, list[tuple[str, bytes]]]]:
    """The documented RunStatusChanged CloudEvent, one run per SDK API and mode, made by the
    SDK itself as tests/samples/cloudevents/generate.py does; `time` replaces the 2017
    timestamp so that the events are recent."""
    from cloudevents.core.bindings import kafka
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent
    from cloudevents.v1 import kafka as kafka_v1
    from cloudevents.v1.http import CloudEvent as CloudEventV1

    documented = json.loads(
        (SAMPLES / "eventgrid/runstatuschanged.cloudevents-schema.json").read_text()
    )[0]
    out: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {}
    for name in ("core.binary", "core.structured", "v1.binary", "v1.structured"):
        attributes = {k: v for k, v in documented.items() if k != "data"}
        attributes["datacontenttype"] = "application/json"  # the v1 API needs it (generate.py)
        data = {**documented["data"], "runId": f"{run_prefix}-{name}"}
        attributes["id"] = f"id-{name}"
        if name.startswith("core"):
            event = CloudEvent({**attributes, "time": time}, data)
            binding = kafka.to_binary if name.endswith("binary") else kafka.to_structured
            message = binding(event, JSONFormat())
        else:
            legacy = CloudEventV1({**attributes, "time": time.isoformat()}, data)
            message = (kafka_v1.to_binary if name.endswith("binary") else kafka_v1.to_structured)(
                legacy
            )
        value = message.value if isinstance(message.value, bytes) else str(message.value).encode()
        out[name] = (value, list(message.headers.items()))
    return out


def test_cloudevents_from_the_sdk_in_both_modes_are_stored(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    """Issue 15, seen 3: binary mode (attributes in ce_ headers) was dead-lettered with
    `TimeGenerated: Field required`. A binary message of another type is skipped, counted."""
    time = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=1)
    made = sdk_messages("sdk", time)
    assert all(any(h == "ce_specversion" for h, _ in made[n][1]) for n in made if "binary" in n)
    other = [
        ("ce_specversion", b"1.0"),
        ("ce_type", b"Microsoft.Storage.BlobCreated"),
        ("ce_source", b"/subscriptions/x/resourceGroups/y"),
        ("ce_id", b"blob-1"),
        ("content-type", b"application/json"),
    ]
    produce(topics, [*made.values(), (b'{"api": "PutBlob"}', other)])
    with service() as running:
        wait_for(lambda: len(rows_of(store, events)) == 4)
        wait_for(
            lambda: running.metric("runwatch_records_skipped_total", format="cloudevents") == 1
        )
        counted = running.metric("runwatch_events_total", format="cloudevents", status="Failed")
        assert counted == 4
    assert rows_of(store, dead_letters) == []
    stored = {row.RunId: row for row in rows_of(store, events)}
    assert set(stored) == {f"sdk-{name}" for name in made}
    for name, row in stored.items():
        assert (row.Status, row.ExperimentName, row.Level) == (
            "Failed",
            "automl-local-regression",
            "Error",
        ), name
        assert row.TimeGenerated.replace(tzinfo=UTC) == time, name
        assert row.CorrelationId == f"id-{name.removeprefix('sdk-')}"
        assert row.OperationName == RUN_STATUS_CHANGED
        assert row.Properties["runTemplate"] == "automl_child"


def test_a_bad_binary_cloudevent_keeps_its_headers_on_the_dead_letter_topic(
    topics: Topics, service: Callable[..., RunningService]
) -> None:
    """Its attributes are its headers: a copy without them could never be re-driven."""
    attributes = [
        ("ce_specversion", b"1.0"),
        ("ce_type", RUN_STATUS_CHANGED.encode()),
        ("ce_source", b"/subscriptions/x/resourceGroups/y"),
        ("ce_id", b"bad-1"),
        ("ce_time", datetime.now(UTC).isoformat().encode()),
        ("content-type", b"application/json"),
    ]
    produce(topics, [(b"{not json", attributes)])
    with service():
        (letter,) = topics.read(topics.dead_letter_topic, 1)
    headers = dict(letter.headers)  # type: ignore[attr-defined]
    assert headers["runwatch.reason"] == b"not_json"
    assert {name: headers[name] for name, _ in attributes} == dict(attributes)
    assert letter.value == b"{not json"  # type: ignore[attr-defined]
