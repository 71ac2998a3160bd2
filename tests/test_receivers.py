"""Every webhook body runwatch renders, checked against the schema or struct its consumer
publishes (tests/samples/schemas, listed with their sources in tests/samples/README.md), and
event data that must stay inert in chat messages. The notifications go through the real
store and the template context the dispatcher builds (consumers/dispatch/context.py); only
the HTTP POST is left out."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import jsonschema
import orjson
import pytest
from jsonschema.protocols import Validator

from consumers.config.receivers import WebhookFormat
from consumers.config.settings import Settings
from consumers.dispatch.context import RunUrl, alert_context
from consumers.dispatch.context import digest_context as build_digest_context
from consumers.dispatch.context import storm_context as build_storm_context
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.model.notifications import NotificationKind
from consumers.notify import inert
from consumers.notify.pagerduty import with_routing_key
from consumers.notify.templating import Renderer
from consumers.outbox.recorder import recording
from consumers.store import Store
from consumers.store.outbox import Outbox
from consumers.store.queries import get_run

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
    store.write_batch(events, record=recording(alerts, {"hook": "webhook"}))
    run_url = RunUrl((config or settings()).run_url_template)
    rows = sorted(Outbox(store).list(limit=100), key=lambda n: n.created_at)
    return [alert_context(row, get_run(store, row.run_id), run_url) for row in rows]


def render(
    fmt: WebhookFormat, context: dict[str, Any], config: Settings | None = None, variant: str = ""
) -> Any:
    renderer = Renderer.for_settings(config or settings())
    return orjson.loads(renderer.render_webhook(fmt, context, variant))


def strings(value: Any) -> list[str]:
    """Every string in a JSON document."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


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


def digest_context(store: Store, *alerts: Alert) -> dict[str, Any]:
    """A noise-control digest of these alerts' notifications, as the dispatcher builds it."""
    events = list({id(a.event): a.event for a in alerts}.values())
    store.write_batch(events, record=recording(alerts, {"hook": "webhook"}))
    rows = sorted(Outbox(store).list(limit=100), key=lambda n: (n.event_time, n.run_id))
    grouped = [dataclasses.replace(r, group_key="0f" * 12) for r in rows]
    head = dataclasses.replace(grouped[0], members=tuple(grouped))
    labels = {"workspace": "ml-prod", "team": "vision"}
    return build_digest_context(head, labels, RunUrl(settings().run_url_template))


def storm_context(store: Store) -> dict[str, Any]:
    alerts = [per_event(event(f"run-{i}")) for i in range(3)]
    store.write_batch([a.event for a in alerts], record=recording(alerts, {"hook": "webhook"}))
    held = Outbox(store).list(limit=100)
    start = T0.replace(second=0)
    summary = dataclasses.replace(
        held[0],
        kind=NotificationKind.STORM,
        rule="storm-control",
        alert={
            "window_start": start.isoformat(),
            "window_end": (start + timedelta(minutes=1)).isoformat(),
        },
    )
    return build_storm_context(summary, held)


def by_status(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["alert"]["status"]: c for c in items}


FORMATS: tuple[WebhookFormat, ...] = get_args(WebhookFormat)
SCHEMA_OF: dict[str, str] = {
    "alertmanager": "alertmanager-webhook.schema.json",
    "azure-common": "azure-common-alert.schema.json",
    "slack": "slack-incoming-webhook.schema.json",
    "teams": "teams-incoming-webhook.schema.json",
    "pagerduty": "pagerduty-events-v2.schema.json",
}


def check(fmt: str, body: Any) -> None:
    """The body against its consumer's schema (Teams: also the card against Adaptive Card
    1.5; PagerDuty: with the routing key the sender adds)."""
    if fmt == "native":
        assert body["version"] == "1"
        return
    if fmt == "pagerduty":
        body = orjson.loads(with_routing_key(orjson.dumps(body), "R" * 32))
    assert errors(SCHEMA_OF[fmt], body) == [], fmt
    if fmt == "azure-common":
        assert errors("azure-common-alert.logicapp.schema.json", body) == []
    if fmt == "teams":
        for attachment in body["attachments"]:
            assert errors("adaptive-card-1.5.0.json", attachment["content"]) == []


def test_azure_common_threshold_firing_and_resolution_match_the_schema(store: Store) -> None:
    config = settings(azure_resource_id_template=ARM)
    firing, resolved = threshold(event()), threshold(event(), "resolved")
    found = by_status(contexts(store, firing, resolved, config=config))
    fired = render("azure-common", found["firing"], config)
    ended = render("azure-common", found["resolved"], config)
    for body in (fired, ended):
        assert errors("azure-common-alert.schema.json", body) == []
        assert errors("azure-common-alert.logicapp.schema.json", body) == []
    assert fired["data"]["essentials"]["monitorCondition"] == "Fired"
    assert ended["data"]["essentials"]["monitorCondition"] == "Resolved"
    assert "resolvedDateTime" in ended["data"]["essentials"]
    # one alert instance: the same alertId fired and resolved
    assert fired["data"]["essentials"]["alertId"] == ended["data"]["essentials"]["alertId"]
    context = fired["data"]["alertContext"]
    assert context["AlertType"] == "Metric measurement"
    assert {"name": "ExperimentName", "value": "bert-finetune"} in context["Dimensions"]
    assert 'tostring(Tags["team"]) == "vision"' in context["SearchQuery"]
    assert context["SearchResults"]["dataSources"][0]["resourceId"].endswith("/ml-prod")


def test_azure_common_digest_matches_the_schema(store: Store) -> None:
    context = digest_context(store, per_event(event("a")), per_event(event("b"), severity=3))
    body = render("azure-common", context, settings(azure_resource_id_template=ARM), "digest")
    assert errors("azure-common-alert.schema.json", body) == []
    essentials = body["data"]["essentials"]
    assert essentials["severity"] == "Sev1"  # the digest's most severe alert
    assert essentials["alertTargetIDs"] == [ARM.format(WorkspaceName="ml-prod")]
    table = body["data"]["alertContext"]["SearchResults"]["tables"][0]
    assert len(table["rows"]) == body["data"]["alertContext"]["ResultCount"] == 2


def test_azure_common_rows_are_typed_as_the_log_analytics_table(store: Store) -> None:
    """Every column a string (never null: "" as Kusto writes it) but TimeGenerated; the tags
    and properties runwatch adds are dynamic."""
    (context,) = contexts(store, per_event(event(DurationMs=1532, Tags={"team": "v"})))
    table = render("azure-common", context)["data"]["alertContext"]["SearchResults"]["tables"][0]
    types = {c["name"]: c["type"] for c in table["columns"]}
    row = dict(zip(types, table["rows"][0], strict=True))
    assert types["TimeGenerated"] == "datetime" and types["Tags"] == "dynamic"
    assert row["DurationMs"] == "1532" and row["ParentRunId"] == ""
    assert row["Tags"] == {"team": "v"}
    for name, kind in types.items():
        if kind == "string":
            assert isinstance(row[name], str), name


def test_azure_common_without_a_resource_template_names_the_workspace(store: Store) -> None:
    """The stored event keeps no ARM resource ID (decoding drops resourceId / topic): without
    `azure_resource_id_template` the target is the workspace name, not a valid ARM ID."""
    (context,) = contexts(store, per_event(event()))
    body = render("azure-common", context)
    assert body["data"]["essentials"]["alertTargetIDs"] == ["ml-prod"]
    assert "dataSources" not in body["data"]["alertContext"]["SearchResults"]


# --- every format, every variant ------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_valid_bodies_for_every_kind_of_notification(
    store: Store, fmt: WebhookFormat
) -> None:
    config = settings(azure_resource_id_template=ARM)
    found = contexts(
        store,
        per_event(event("r-event", Tags={"a": "b"})),
        threshold(event("r-threshold")),
        threshold(event("r-threshold"), "resolved"),
        config=config,
    )
    for context in found:
        check(fmt, render(fmt, context, config))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_valid_digests(store: Store, fmt: WebhookFormat) -> None:
    context = digest_context(
        store, per_event(event("a")), per_event(event("b")), threshold(event("c"), "resolved")
    )
    renderer = Renderer.for_settings(settings(azure_resource_id_template=ARM))
    check(fmt, orjson.loads(renderer.render_webhook(fmt, context, "digest")))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "azure-common"])
def test_every_format_renders_valid_storm_summaries(store: Store, fmt: WebhookFormat) -> None:
    """(azure-common: a storm concerns no Azure resource, so its alertTargetIDs cannot be an
    ARM ID; it is checked against the Logic Apps schema below.)"""
    body = orjson.loads(Renderer().render_webhook(fmt, storm_context(store), "storm"))
    check(fmt, body)


def test_azure_common_storm_summary_matches_the_logic_apps_schema(store: Store) -> None:
    body = orjson.loads(Renderer().render_webhook("azure-common", storm_context(store), "storm"))
    assert errors("azure-common-alert.logicapp.schema.json", body) == []
    assert body["data"]["alertContext"]["ResultCount"] == 3


# --- Slack and Teams: event text stays text ---------------------------------------------------

BIDI = "run-\u202eexe.txt\u202c"
NASTY = {
    "Message": HOSTILE + "\n*bold* _it_ ~x~ `code` [re-login](https://evil.example) <b>html</b>",
    "ExperimentName": "<@U024BE7LH> **exp** [x](https://evil.example)",
    "WorkspaceName": "ws\r\nInjected: line",
    "Tags": {"t": "<!everyone>"},
}


def nasty_contexts(store: Store) -> list[dict[str, Any]]:
    return contexts(store, per_event(event(BIDI, **NASTY)), threshold(event(BIDI, **NASTY)))


def slack_texts(body: Any) -> list[tuple[str, str]]:
    """(type, text) of every Slack text object, and ("top", text) for the fallback."""
    found: list[tuple[str, str]] = [("top", body["text"])]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") in ("plain_text", "mrkdwn") and "text" in value:
                found.append((value["type"], value["text"]))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body["blocks"])
    return found


def test_slack_bodies_validate_and_hostile_event_text_is_inert(store: Store) -> None:
    escaped = json.loads((SCHEMAS.parent / "slack" / "escaping.json").read_text())
    for context in nasty_contexts(store):
        body = render("slack", context)
        assert errors("slack-incoming-webhook.schema.json", body) == []
        assert body["mrkdwn"] is False  # the fallback text is not formatted either
        texts = slack_texts(body)
        for kind, text in texts:
            assert "<" not in text and ">" not in text, text  # no mention, no link
            assert "\u202e" not in text and "\u202c" not in text  # no reordering
            if kind == "mrkdwn":  # only runwatch's own words are formatted
                assert "bold" not in text and "evil" not in text and "U024" not in text
        header = body["blocks"][0]["text"]["text"]
        assert "\n" not in header and "\r" not in header
        joined = "\n".join(t for _, t in texts)
        if context["alert"]["kind"] == "event":
            assert escaped["hostile_event_text"]["escaped"] in joined
            assert "&lt;@U024BE7LH&gt;" in joined
            assert "Injected: line" in joined and "ws\r\n" not in joined
        assert "run-exe.txt" in joined


def test_teams_cards_validate_and_hostile_event_text_is_inert(store: Store) -> None:
    for context in nasty_contexts(store):
        body = render("teams", context)
        assert errors("teams-incoming-webhook.schema.json", body) == []
        card = body["attachments"][0]["content"]
        assert errors("adaptive-card-1.5.0.json", card) == []
        # Markdown is read in TextBlock and FactSet texts; event values are never there.
        markdown_texts = [
            value
            for element in card["body"]
            for value in (
                [element.get("text", "")] + [f.get("value", "") for f in element.get("facts", [])]
            )
        ]
        for text in markdown_texts:
            assert "evil" not in text and "bold" not in text and "U024" not in text
        runs = [
            i["text"] for e in card["body"] if e["type"] == "RichTextBlock" for i in e["inlines"]
        ]
        assert all("\u202e" not in text for text in runs)
        assert any("[re-login](https://evil.example)" in text for text in runs)  # as text
        title = runs[0]
        assert "\n" not in title and "run-exe.txt" in title


def test_slack_escaping_never_splits_an_entity_when_cutting() -> None:
    text = inert.slack("&" * 5000, limit=3000)
    assert len(text) <= 3000 and text.endswith("&amp;…")
    assert inert.slack("a\u2028b\r\nc", oneline=True) == "a b c"
    assert inert.plain("x\x00\x1b[31my\u2066z") == "x[31myz"


# --- Alertmanager ------------------------------------------------------------------------------


def test_alertmanager_fingerprint_is_64_bits_of_the_stored_one(store: Store) -> None:
    """The notification rows (dedup keys, e-mail threading, follow-ups) keep their 24-digit
    fingerprint; only the Alertmanager body shows its first 16 digits."""
    alert = per_event(event())
    (context,) = contexts(store, alert)
    (row,) = Outbox(store).list()
    assert row.fingerprint == alert.fingerprint and len(row.fingerprint) == 24
    body = render("alertmanager", context)
    assert body["alerts"][0]["fingerprint"] == alert.fingerprint[:16]


def test_alertmanager_resolution_carries_the_same_labels_and_an_end(store: Store) -> None:
    found = by_status(contexts(store, threshold(event()), threshold(event(), "resolved")))
    fired = render("alertmanager", found["firing"])
    ended = render("alertmanager", found["resolved"])
    for body in (fired, ended):
        assert errors("alertmanager-webhook.schema.json", body) == []
    assert fired["alerts"][0]["labels"] == ended["alerts"][0]["labels"]
    assert fired["alerts"][0]["fingerprint"] == ended["alerts"][0]["fingerprint"]
    assert fired["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert ended["status"] == "resolved" and ended["alerts"][0]["endsAt"].endswith("Z")
    labels = fired["alerts"][0]["labels"]
    assert labels == {
        "alertname": "many-failures",
        "experiment": "bert-finetune",
        "severity": "critical",
        "tag_team": "vision",
    }


def test_alertmanager_digest_is_one_group_of_alerts(store: Store) -> None:
    context = digest_context(store, per_event(event("a")), per_event(event("b")))
    body = orjson.loads(Renderer().render_webhook("alertmanager", context, "digest"))
    assert errors("alertmanager-webhook.schema.json", body) == []
    assert [a["labels"]["run_id"] for a in body["alerts"]] == ["a", "b"]
    assert body["groupLabels"] == {"team": "vision", "workspace": "ml-prod"}
    assert body["groupKey"] == '{}:{team="vision", workspace="ml-prod"}'
    assert "run_id" not in body["commonLabels"] and body["commonLabels"]["alertname"]


# --- PagerDuty ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "expected"),
    [(0, "critical"), (1, "error"), (2, "warning"), (3, "info"), (4, "info")],
)
def test_pagerduty_trigger_maps_severity_and_keeps_within_limits(
    store: Store, severity: int, expected: str
) -> None:
    long = event(Message="x" * 5000, ExperimentName="e" * 2000)
    alert = per_event(long, severity=severity)
    (context,) = contexts(store, alert)
    body = render("pagerduty", context)
    assert "routing_key" not in body  # added at send time only
    check("pagerduty", body)
    assert body["event_action"] == "trigger" and body["dedup_key"] == alert.fingerprint
    payload = body["payload"]
    assert payload["severity"] == expected
    assert len(payload["summary"]) <= 1024
    assert datetime.fromisoformat(payload["timestamp"]) == T0
    assert payload["timestamp"].endswith("Z")
    assert payload["custom_details"]["run_id"] == "run-42"
    assert payload["custom_details"]["message"] == "x" * 5000


def test_pagerduty_resolution_resolves_the_same_incident(store: Store) -> None:
    found = by_status(contexts(store, threshold(event()), threshold(event(), "resolved")))
    fired = render("pagerduty", found["firing"])
    ended = render("pagerduty", found["resolved"])
    check("pagerduty", ended)
    assert ended == {"event_action": "resolve", "dedup_key": fired["dedup_key"]}


# --- e-mail (checked once in mutt; the text part kept a traceback's indentation) ----------


def test_email_text_indents_every_line_of_a_traceback_under_error(store: Store) -> None:
    message = 'Traceback (most recent call last):\n  File "train.py", line 42\nOutOfMemoryError'
    (context,) = contexts(store, per_event(event(Message=message)))
    text = Renderer.for_settings(settings()).render_email(context).text
    assert (
        'Error\n  Traceback (most recent call last):\n    File "train.py", line 42\n'
        "  OutOfMemoryError\n"
    ) in text
