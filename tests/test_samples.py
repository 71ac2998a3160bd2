"""The samples in tests/samples are sound: every file parses and is listed with its source in
the README, every schema is a valid JSON Schema, every documented sample validates against
its consumer's schema (and the schemas are not vacuous: known-bad bodies fail), the Azure
rows agree with the table reference, and the CloudEvents file is what the SDK makes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema.protocols import Validator

SAMPLES = Path(__file__).resolve().parent / "samples"
SCHEMAS = SAMPLES / "schemas"
README = (SAMPLES / "README.md").read_text(encoding="utf-8")
ALL_FILES = sorted(
    p
    for p in SAMPLES.rglob("*")
    if p.is_file() and "__pycache__" not in p.parts and p.name != "README.md"
)


def load(relative: str) -> Any:
    return json.loads((SAMPLES / relative).read_text(encoding="utf-8"))


def validator(schema_name: str, ref: str | None = None) -> Validator:
    schema = json.loads((SCHEMAS / schema_name).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    if ref is not None:  # a fragment of the schema, e.g. "#/$defs/logSearchContext"
        schema = {**schema, "$ref": ref}
        schema.pop("allOf", None)
        schema.pop("required", None)
        schema.pop("properties", None)
        schema.pop("type", None)
    validating: Validator = cls(schema)
    return validating


def errors(schema: Validator, instance: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in schema.iter_errors(instance)]


# --- every file ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=[str(p.relative_to(SAMPLES)) for p in ALL_FILES])
def test_every_sample_file_parses_and_is_listed_in_the_readme(path: Path) -> None:
    relative = str(path.relative_to(SAMPLES))
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        json.loads(text)
    elif path.suffix == ".jsonl":
        assert all(json.loads(line) for line in text.splitlines())
    elif path.suffix in (".yaml", ".yml"):
        yaml.safe_load(text)
    if path.parent.name != "failure_messages" or path.suffix != ".txt":  # listed in cases.yaml
        assert relative in README, f"{relative}: not in tests/samples/README.md with its source"


@pytest.mark.parametrize("name", sorted(p.name for p in SCHEMAS.glob("*.json")))
def test_every_schema_is_a_valid_json_schema(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    declared = schema.get("$schema")
    assert declared is None or cls.META_SCHEMA["$schema"].rstrip("#") == declared.rstrip("#")


# --- documented samples validate ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["webhook-firing.json", "webhook-resolved.json"])
def test_real_alertmanager_bodies_match_the_webhook_schema(name: str) -> None:
    body = load(f"alertmanager/{name}")
    assert errors(validator("alertmanager-webhook.schema.json"), body) == []
    alert = body["alerts"][0]
    assert re.fullmatch(r"[0-9a-f]{16}", alert["fingerprint"])
    if body["status"] == "firing":
        assert alert["endsAt"] == "0001-01-01T00:00:00Z"  # Go's zero time, not null


def test_alertmanager_schema_rejects_what_issue_15_saw() -> None:
    body = load("alertmanager/webhook-firing.json")
    schema = validator("alertmanager-webhook.schema.json")
    wide = copy.deepcopy(body)
    wide["alerts"][0]["fingerprint"] = "91dadb72dd7c51cf00000000"  # 24 hex digits
    assert errors(schema, wide)
    missing = copy.deepcopy(body)
    del missing["truncatedAlerts"]
    assert errors(schema, missing)


def test_azure_common_alert_samples_match() -> None:
    full = load("azure-monitor-alerts/common-alert.metric.docs-sample.json")
    assert errors(validator("azure-common-alert.schema.json"), full) == []
    assert errors(validator("azure-common-alert.logicapp.schema.json"), full) == []
    log_search = load("azure-monitor-alerts/alert-context.log-analytics.docs-sample.json")
    context = validator("azure-common-alert.schema.json", "#/$defs/logSearchContext")
    assert errors(context, log_search["alertContext"]) == []
    v2 = load("azure-monitor-alerts/alert-context.log-alerts-v2.docs-sample.json")
    v2_context = validator("azure-common-alert.schema.json", "#/$defs/logAlertsV2Context")
    assert errors(v2_context, v2["alertContext"]) == []


def test_azure_common_alert_schema_rejects_what_issue_15_saw() -> None:
    log_search = load("azure-monitor-alerts/alert-context.log-analytics.docs-sample.json")
    context = validator("azure-common-alert.schema.json", "#/$defs/logSearchContext")
    bare = copy.deepcopy(log_search["alertContext"])
    table = bare["SearchResults"]["tables"][0]
    table["columns"] = [c["name"] for c in table["columns"]]  # bare strings
    assert errors(context, bare)
    full = load("azure-monitor-alerts/common-alert.metric.docs-sample.json")
    by_name = copy.deepcopy(full)
    by_name["data"]["essentials"]["alertTargetIDs"] = ["ml-workspace"]  # a name, not an ID
    assert errors(validator("azure-common-alert.schema.json"), by_name)
    log_alert = copy.deepcopy(full)
    log_alert["data"]["essentials"].update(monitoringService="Log Analytics", signalType="Log")
    log_alert["data"]["alertContext"] = bare
    assert errors(validator("azure-common-alert.schema.json"), log_alert)
    log_alert["data"]["alertContext"] = log_search["alertContext"]
    assert errors(validator("azure-common-alert.schema.json"), log_alert) == []


@pytest.mark.parametrize(
    "name",
    [
        "trigger.openapi-example.json",
        "trigger.docs-example.json",
        "acknowledge.docs-example.json",
        "resolve.docs-example.json",
    ],
)
def test_pagerduty_documented_events_match(name: str) -> None:
    assert errors(validator("pagerduty-events-v2.schema.json"), load(f"pagerduty/{name}")) == []


def test_pagerduty_schema_is_strict_where_the_docs_are() -> None:
    schema = validator("pagerduty-events-v2.schema.json")
    trigger = load("pagerduty/trigger.openapi-example.json")
    for change in (
        {"severity": "high"},
        {"summary": "x" * 1025},
        {"source": ""},
    ):
        bad = copy.deepcopy(trigger)
        bad["payload"].update(change)
        assert errors(schema, bad), change
    assert errors(schema, {**trigger, "dedup_key": "k" * 256})
    assert errors(schema, {"routing_key": "r", "event_action": "resolve"})  # no dedup_key
    assert errors(schema, {"routing_key": "r", "event_action": "trigger"})  # no payload


def test_teams_documented_card_matches_the_adaptive_card_schema() -> None:
    message = load("teams/incoming-webhook-adaptive-card.docs-sample.json")
    assert errors(validator("teams-incoming-webhook.schema.json"), message) == []
    card = message["attachments"][0]["content"]
    cards = validator("adaptive-card-1.5.0.json")
    assert errors(cards, card) == []
    assert errors(cards, {**card, "body": [{"type": "Markdown", "text": "x"}]})
    submit = {**card, "actions": [{"type": "Action.Submit", "title": "Ack"}]}
    assert errors(cards, submit) == []  # a valid card ...
    teams = {**message, "attachments": [{**message["attachments"][0], "content": submit}]}
    assert errors(validator("teams-incoming-webhook.schema.json"), teams)  # ... Teams refuses


def test_slack_reference_blocks_match_and_limits_hold() -> None:
    schema = validator("slack-incoming-webhook.schema.json")
    blocks = load("slack/blocks.reference-example.json")
    assert errors(schema, {"text": "fallback", "blocks": blocks}) == []
    long_header = {"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}
    assert errors(schema, {"blocks": [long_header]})
    assert errors(schema, {"blocks": [{"type": "section", "text": {"type": "md", "text": "x"}}]})
    rules = load("slack/escaping.json")
    escaped = rules["hostile_event_text"]["escaped"]
    assert "<" not in escaped and ">" not in escaped
    assert rules["example"]["sent_to_server"] == "Hello &amp; &lt;world&gt;"


def test_cloudevents_samples_match_the_spec_schema() -> None:
    schema = validator("cloudevents-1.0.json")
    for event in load("eventgrid/runstatuschanged.cloudevents-schema.json"):
        assert errors(schema, event) == []
    sdk = load("cloudevents/sdk-kafka-messages.json")
    for name in ("core.to_structured", "v1.to_structured"):
        assert errors(schema, json.loads(sdk[name]["value"])) == []
    assert (
        errors(schema, load("cloudevents/kafka-protocol-binding.json")["structured"]["value"]) == []
    )
    assert errors(schema, {"specversion": "1.0", "id": "x", "type": "t"})  # no source


# --- Azure inputs agree with the table reference -----------------------------------------------


def test_log_analytics_rows_follow_the_table_reference() -> None:
    reference = load("azure/amlrunstatuschangedevent.columns.json")["columns"]
    types = {c["name"]: c["type"] for c in reference}
    response = load("azure/log-analytics-query-response.json")
    table = response["tables"][0]
    assert [(c["name"], c["type"]) for c in table["columns"]] == list(types.items())
    names = list(types)
    for row in table["rows"]:
        for name, value in zip(names, row, strict=True):
            expected = {"string": str, "datetime": str, "real": float}[types[name]]
            assert isinstance(value, expected), (name, value)
    assert any(row[names.index("ParentRunId")] == "" for row in table["rows"])  # not null
    assert any(row[names.index("DurationMs")] == "" for row in table["rows"])
    rows = load("azure/log-analytics-rows.json")
    assert rows == [dict(zip(names, row, strict=True)) for row in table["rows"]]
    documented = load("azure/log-analytics-api-response.docs-sample.json")["tables"][0]
    assert set(documented) == set(table) == {"name", "columns", "rows"}


def test_workspace_export_records_carry_type_not_category() -> None:
    records = load("azure/workspace-data-export.eventhub.json")["records"]
    blob = (SAMPLES / "azure/workspace-data-export.blob.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in blob] == records
    for record in records:
        assert record["Type"] == "AmlRunStatusChangedEvent"
        assert "category" not in record and "TenantId" in record


def test_resource_log_records_follow_the_common_schema() -> None:
    required = {"time", "resourceId", "operationName", "category"}
    for name in (
        "azure/resource-log.eventhub.docs-sample.json",
        "azure/resource-log.amlrunstatuschangedevent.eventhub.json",
    ):
        for record in load(name)["records"]:
            assert required <= set(record), name


def test_event_grid_validation_handshake_samples_agree() -> None:
    event = load("eventgrid/subscription-validation-event.json")[0]
    answer = load("eventgrid/subscription-validation-response.json")
    assert event["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert answer == {"validationResponse": event["data"]["validationCode"]}


# --- the official CloudEvents SDK ----------------------------------------------------------------


def test_cloudevents_file_is_what_the_installed_sdk_makes() -> None:
    generate = pytest.importorskip("tests.samples.cloudevents.generate")
    stored = load("cloudevents/sdk-kafka-messages.json")
    made = generate.messages()
    if made["cloudevents_version"] != stored["cloudevents_version"]:
        pytest.skip(f"sample made with cloudevents {stored['cloudevents_version']}")
    assert made == stored
    binary = stored["core.to_binary"]["headers"]
    assert binary["content-type"] == "application/json"
    assert {"ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time"} <= set(binary)
    assert stored["core.to_structured"]["headers"] == {
        "content-type": "application/cloudevents+json"
    }
    # the v1 API's structured mode labels the message with the data's content type and drops
    # datacontenttype from the value: a receiver must recognise structured mode by the value
    assert stored["v1.to_structured"]["headers"] == {"content-type": "application/json"}
    assert "datacontenttype" not in json.loads(stored["v1.to_structured"]["value"])
