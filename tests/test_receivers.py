"""Every webhook body runwatch renders, checked against the schema or struct its consumer
publishes (tests/samples/schemas, listed with their sources in tests/samples/README.md), and
event data that must stay inert in chat messages. The notifications go through the real
store and the dispatcher's template context; only the HTTP POST is left out."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from jsonschema.protocols import Validator
from prometheus_client import CollectorRegistry

from consumers.alerts import Alert
from consumers.dispatcher import Dispatcher
from consumers.events import RunStatusEvent
from consumers.metrics import Metrics
from consumers.settings import Settings, WebhookFormat
from consumers.store import Store
from consumers.store.outbox import Outbox
from consumers.templating import Renderer

SCHEMAS = Path(__file__).resolve().parent / "samples" / "schemas"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
ARM = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ml-rg"
    "/providers/Microsoft.MachineLearningServices/workspaces/{WorkspaceName}"
)
HOSTILE = "<!channel> please <https://evil.example|re-login> & retry"


def validator(name: str) -> Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    checker: Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return checker


def errors(schema: str, body: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator(schema).iter_errors(body)]


def event(run_id: str = "run-42", **extra: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "TimeGenerated": T0,
            "RunId": run_id,
            "Status": "Failed",
            "ExperimentName": "bert-finetune",
            "WorkspaceName": "ml-prod",
            "Message": "CUDA out of memory. Tried to allocate 2.00 GiB",
            "Level": "Error",
            **extra,
        }
    )


def per_event(ev: RunStatusEvent, severity: int = 1) -> Alert:
    return Alert(
        rule="run-failed",
        severity=severity,
        labels={"team": "vision"},
        annotations={"summary": "A run failed"},
        receivers=("hook",),
        throttle_key=f"RunId={ev.RunId}|Status={ev.Status}",
        event=ev,
    )


def threshold(ev: RunStatusEvent, status: str = "firing") -> Alert:
    return Alert(
        rule="many-failures",
        severity=0,
        annotations={"summary": "Failures piling up"},
        receivers=("hook",),
        throttle_key="ExperimentName=bert-finetune",
        event=ev,
        kind="threshold",
        status=status,  # type: ignore[arg-type]
        instance="e1",
        summary="many-failures: 5 events in 10m in ExperimentName=bert-finetune (>= 5)",
        group={"ExperimentName": "bert-finetune", "Tags.team": "vision"},
        value=5.0,
    )


def settings(**extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "run_url_template": "https://ml.example.com/runs/{RunId}",
            "receivers": {"hook": {"webhook": {"url": "http://127.0.0.1:9/hook"}}},
            **extra,
        }
    )


def contexts(store: Store, *alerts: Alert, config: Settings | None = None) -> list[dict[str, Any]]:
    """The template contexts the dispatcher builds for these alerts' notifications, oldest
    first (through the real store: the row's JSON is what the template sees)."""
    events = list({id(a.event): a.event for a in alerts}.values())
    store.write_batch(events, alerts=alerts, receiver_kinds={"hook": "webhook"})
    dispatcher = Dispatcher(store, config or settings(), Metrics(CollectorRegistry()))
    rows = sorted(Outbox(store).list(limit=100), key=lambda n: n.created_at)
    return [dispatcher.context(row) for row in rows]


def render(fmt: WebhookFormat, context: dict[str, Any], config: Settings | None = None) -> Any:
    renderer = Renderer.for_settings(config or settings())
    return orjson.loads(renderer.render_webhook(fmt, context))


# --- issue 15, item 4: azure-common ------------------------------------------------------------


def test_azure_common_per_event_body_matches_the_common_alert_schema(store: Store) -> None:
    config = settings(azure_resource_id_template=ARM)
    (context,) = contexts(store, per_event(event()), config=config)
    body = render("azure-common", context, config)
    assert errors("azure-common-alert.schema.json", body) == []
    essentials = body["data"]["essentials"]
    assert essentials["alertTargetIDs"] == [ARM.format(WorkspaceName="ml-prod")]
    table = body["data"]["alertContext"]["SearchResults"]["tables"][0]
    assert {"name": "RunId", "type": "string"} in table["columns"]
    assert {"name": "TimeGenerated", "type": "datetime"} in table["columns"]
    names = [c["name"] for c in table["columns"]]
    (row,) = table["rows"]
    assert row[names.index("RunId")] == "run-42"


def strings(value: Any) -> list[str]:
    """Every string in a JSON document."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_azure_common_search_results_columns_are_name_type_objects(store: Store) -> None:
    (context,) = contexts(store, per_event(event()))
    body = render("azure-common", context)
    table = body["data"]["alertContext"]["SearchResults"]["tables"][0]
    assert all(isinstance(c, dict) and set(c) == {"name", "type"} for c in table["columns"])


def test_slack_channel_mentions_and_links_from_a_run_message_stay_text(store: Store) -> None:
    (context,) = contexts(store, per_event(event(Message=HOSTILE, ExperimentName=HOSTILE)))
    body = render("slack", context)
    for text in strings(body):
        assert "<!channel>" not in text and "<https://evil" not in text, text
    assert any("&lt;!channel&gt;" in text for text in strings(body))


def test_alertmanager_body_matches_alertmanagers_webhook_message(store: Store) -> None:
    (context,) = contexts(store, per_event(event()))
    body = render("alertmanager", context)
    assert errors("alertmanager-webhook.schema.json", body) == []
    assert re.fullmatch(r"[0-9a-f]{16}", body["alerts"][0]["fingerprint"])
