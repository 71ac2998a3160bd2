"""Unit tests of the HTTP ingest's pure half (consumers.ingest.http_batch.plan) and its settings.
The server itself is tested against a real `runwatch serve` in test_http_ingest.py.

Bodies: tests/samples/eventgrid/ (VERBATIM from MicrosoftDocs/azure-docs, see its README),
with run ids and times changed where marked."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers.config.service import HttpIngestSettings
from consumers.config.settings import load_settings
from consumers.ingest.http_batch import Batch, Message, Validation, plan
from consumers.model.errors import ConfigError, DecodeError
from consumers.model.limits import IngestLimits

SAMPLES = Path(__file__).resolve().parent / "samples" / "eventgrid"
BOUNDS = IngestLimits().at(datetime.now(UTC))
STRUCTURED = (("content-type", b"application/cloudevents+json; charset=UTF-8"),)


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def event(run_id: str, *, cloud: bool = False, status: str = "failed") -> dict[str, Any]:
    name = f"runstatuschanged.{'cloudevents' if cloud else 'eventgrid'}-schema.json"
    value: dict[str, Any] = copy.deepcopy(sample(name)[0])
    value["data"] |= {"runId": run_id, "runStatus": status}
    value["time" if cloud else "eventTime"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return value


def planned(body: Any, headers: dict[str, str] | None = None, max_bytes: int = 1 << 20) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return plan(data, headers or {}, bounds=BOUNDS, max_bytes=max_bytes)


def test_the_validation_event_is_answered_with_its_code() -> None:
    body = (SAMPLES / "subscription-validation-event.json").read_bytes()
    got = planned(body, {"aeg-event-type": "SubscriptionValidation"})
    assert got == Validation(sample("subscription-validation-response.json")["validationResponse"])
    assert planned(body) == got  # recognised by its event type alone, too


def test_a_validation_header_without_the_event_is_refused() -> None:
    with pytest.raises(DecodeError) as caught:
        planned([event("r1")], {"Aeg-Event-Type": "SubscriptionValidation"})
    assert caught.value.reason == "schema"


def test_a_batch_becomes_one_message_per_event_keyed_by_its_run() -> None:
    other = {**event("x"), "eventType": "Microsoft.MachineLearningServices.ModelRegistered"}
    batch = [event("r1"), other, event("r2", status="??"), event("r3")]
    got = planned(batch)
    assert isinstance(got, Batch)
    assert (got.events, got.skipped, got.rejected) == (2, 1, 1)
    assert [m.key for m in got.messages] == [b"r1", None, b"r3"]  # the bad one, for ingest
    assert orjson.loads(got.messages[1].value)["data"]["runId"] == "r2"
    assert all(m.headers == () for m in got.messages)


def test_cloudevents_are_published_in_structured_mode() -> None:
    (message,) = planned([event("c1", cloud=True)]).messages
    assert (message.key, message.headers) == (b"c1", STRUCTURED)
    assert orjson.loads(message.value)["specversion"] == "1.0"
    single = orjson.dumps(event("c2", cloud=True))
    assert planned(single).messages == (Message(b"c2", single, STRUCTURED),)  # the body as is


def test_http_binary_mode_becomes_kafka_binary_mode() -> None:
    cloud = event("b1", cloud=True)
    headers = {f"ce-{k}": str(v) for k, v in cloud.items() if k != "data"}
    headers["Content-Type"] = "application/json"
    data = orjson.dumps(cloud["data"])
    (message,) = planned(data, headers).messages
    assert (message.key, message.value) == (b"b1", data)
    assert ("ce_type", b"Microsoft.MachineLearningServices.RunStatusChanged") in message.headers
    assert ("content-type", b"application/json") in message.headers


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "not_json"),
        (b"[]", "unknown_shape"),
        (
            {"TimeGenerated": "2024-05-01T00:00:00Z", "RunId": "r", "Status": "Failed"},
            "unknown_shape",
        ),
        ({"records": []}, "unknown_shape"),
        ([{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}], "schema"),
    ],
)
def test_bodies_that_cannot_be_used(body: Any, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        planned(body)
    assert caught.value.reason == reason


def test_a_single_event_larger_than_a_kafka_message_is_too_large() -> None:
    body = orjson.dumps(event("r1"))
    with pytest.raises(DecodeError) as caught:
        planned(body, max_bytes=len(body) - 1)
    assert caught.value.reason == "too_large"


# --- settings -----------------------------------------------------------------------------------


def test_http_ingest_is_off_by_default_and_needs_a_secret_when_on(tmp_path: Path) -> None:
    assert load_settings().http_ingest.enabled is False
    config = tmp_path / "runwatch.yaml"
    config.write_text("http_ingest: {enabled: true}\n")
    with pytest.raises(ConfigError, match="secret"):
        load_settings(config)


def test_the_secret_from_the_environment_or_a_file_of_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "runwatch.yaml"
    config.write_text("http_ingest: {enabled: true, listen: '127.0.0.1:0'}\n")
    monkeypatch.setenv("RUNWATCH_HTTP_INGEST__SECRET", "from-env")
    assert load_settings(config).http_ingest.secrets() == ("from-env",)
    secret_file = tmp_path / "secret"
    secret_file.write_text("new\n\nold\n")
    secret_file.chmod(0o600)
    settings = HttpIngestSettings(enabled=True, secret_file=secret_file)
    assert settings.secrets() == ("new", "old")
    assert "new" not in repr(HttpIngestSettings(enabled=True, secret="new"))
    secret_file.write_text("\n")
    secret_file.chmod(0o600)
    with pytest.raises(ConfigError):
        settings.secrets()


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="tls_keyfile"):
        HttpIngestSettings(tls_certfile=Path("cert.pem"))
