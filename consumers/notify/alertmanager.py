"""Speaking Alertmanager: the labels and annotations of a runwatch alert as Alertmanager
knows them, its 16-digit fingerprint, and the `alertmanager-push` receiver that POSTs
alerts to an existing Alertmanager's `/api/v2/alerts`.

One label set serves both directions: the `alertmanager` webhook body (what Alertmanager
would POST to a webhook, templates/webhook/alertmanager.json.j2 calls `alertmanager_labels`)
and the push. Alertmanager identifies an alert by its label set, so a firing and its
resolution carry the same labels: a per-event alert is labelled by its run and status, a
stateful alert (threshold, absence, ...) by its group, never by the run that explains it.

Label names must match `[a-zA-Z_][a-zA-Z0-9_]*` (Alertmanager 0.25 refuses the whole batch
otherwise): the known columns get short names (`RunId` -> `run_id`, `Tags.team` ->
`tag_team`), anything else has its other characters replaced by `_`. Empty values are left
out (Alertmanager treats an empty label as absent).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import orjson

from consumers.config.receivers import AlertmanagerReceiver
from consumers.model.alerts import SEVERITY_NAMES
from consumers.model.events import to_utc
from consumers.notify.webhook import post

STORM_ALERTNAME = "RunwatchNotificationStorm"
_KNOWN = {
    "RunId": "run_id",
    "Status": "status",
    "ExperimentName": "experiment",
    "WorkspaceName": "workspace",
    "RunType": "run_type",
}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
# `severity` as Prometheus users route on it: Sev0 critical ... Sev4 verbose.
SEVERITY_LABELS = {level: name.split()[1] for level, name in SEVERITY_NAMES.items()}


def fingerprint64(fingerprint: str) -> str:
    """Alertmanager's fingerprints are 64-bit values printed as 16 hex digits (some consumers
    parse them as numbers). runwatch keeps its 96-bit fingerprint internally -- the stored
    notifications, e-mail threading (Message-ID / References) and follow-up detection are
    keyed by it -- and shows Alertmanager consumers its first 64 bits."""
    return fingerprint[:16]


def label_name(column: str) -> str:
    head, dot, key = column.partition(".")
    if dot and head in ("Tags", "Properties"):
        column = ("tag_" if head == "Tags" else "property_") + key
    name = _KNOWN.get(column) or _INVALID.sub("_", column)
    return "_" + name if not name or name[0].isdigit() else name


def alert_labels(alert: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, str]:
    """`alert` and `event` as in a template context."""
    out = {label_name(k): str(v) for k, v in alert["labels"].items()}
    if alert.get("kind", "event") == "event":
        own = {
            "run_id": event.get("RunId"),
            "status": event.get("Status"),
            "experiment": event.get("ExperimentName"),
            "workspace": event.get("WorkspaceName"),
            "cause": event.get("cause"),
        }
    else:
        own = {label_name(k): v for k, v in alert.get("group", {}).items()}
    out.update({k: str(v) for k, v in own.items() if v not in (None, "")})
    out["alertname"] = alert["rule"]
    out["severity"] = SEVERITY_LABELS[alert["severity"]]
    return {k: v for k, v in sorted(out.items()) if v != ""}


def alert_annotations(
    alert: Mapping[str, Any], event: Mapping[str, Any], run_url: str | None = None
) -> dict[str, str]:
    out = {str(k): str(v) for k, v in alert["annotations"].items()}
    summary = alert.get("summary") or out.get("summary") or alert["rule"]
    out["summary"] = summary
    if event.get("Message"):
        out["message"] = str(event["Message"])
    if alert.get("kind", "event") != "event":
        out["run_id"] = str(event.get("RunId", ""))
        if alert.get("value") is not None:
            out["value"] = f"{alert['value']:g}"
    if run_url:
        out["run_url"] = run_url
    return {k: v for k, v in sorted(out.items()) if v != ""}


def common(mappings: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The pairs every mapping has (commonLabels, commonAnnotations of a group)."""
    if not mappings:
        return {}
    first, *rest = mappings
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


def group_labels(values: Mapping[str, Any]) -> dict[str, str]:
    """A group's group_by values as Alertmanager labels (empty values left out)."""
    return {label_name(str(k)): str(v) for k, v in sorted(values.items()) if v not in (None, "")}


def group_key(labels: Mapping[str, str]) -> str:
    """As Alertmanager writes it: the route's matchers (none), then the group's labels."""
    inner = ", ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in sorted(labels.items()))
    return "{}:{" + inner + "}"


def _stamp(value: datetime) -> str:
    return to_utc(value).isoformat().replace("+00:00", "Z")


def postable(
    alert: Mapping[str, Any],
    event: Mapping[str, Any],
    run_url: str | None,
    *,
    created_at: str,
    hold_firing_s: float | None,
) -> dict[str, Any]:
    """One `postableAlert` of Alertmanager's API v2. A resolution ends at the time it was
    recorded (`created_at`); a stateful firing is held for `hold_firing_s` when a
    resolution will follow (None: no endsAt, Alertmanager's resolve_timeout applies)."""
    starts = to_utc(datetime.fromisoformat(event["TimeGenerated"]))
    body: dict[str, Any] = {
        "labels": alert_labels(alert, event),
        "annotations": alert_annotations(alert, event, run_url),
        "startsAt": _stamp(starts),
    }
    recorded = to_utc(datetime.fromisoformat(created_at))
    if alert.get("status") == "resolved":
        body["endsAt"] = _stamp(max(recorded, starts))
    elif alert.get("kind", "event") != "event" and hold_firing_s is not None:
        body["endsAt"] = _stamp(max(recorded, starts) + timedelta(seconds=hold_firing_s))
    if run_url:
        body["generatorURL"] = run_url
    return body


def postable_alerts(
    context: Mapping[str, Any], variant: str, *, hold_firing_s: float | None
) -> list[dict[str, Any]]:
    """What one notification pushes: its alert, a digest's alerts, or a storm summary."""
    created_at = context["notification"]["created_at"]
    if variant == "storm":
        storm = context["storm"]
        return [
            {
                "labels": {
                    "alertname": STORM_ALERTNAME,
                    "receiver": storm["receiver"],
                    "severity": SEVERITY_LABELS[2],
                },
                "annotations": {
                    "summary": f"runwatch held back {storm['count']} notification(s) for "
                    f"{storm['receiver']} between {storm['window_start']} and "
                    f"{storm['window_end']} (storm control)"
                },
                "startsAt": _stamp(datetime.fromisoformat(storm["window_start"])),
            }
        ]
    items: Sequence[Mapping[str, Any]] = context["alerts"] if variant == "digest" else [context]
    return [
        postable(
            item["alert"],
            item["event"],
            item["run_url"],
            created_at=created_at,
            hold_firing_s=hold_firing_s,
        )
        for item in items
    ]


class AlertmanagerSender:
    """POSTs to `/api/v2/alerts`: 200 accepted; 400 (an alert Alertmanager refuses) is dead
    at once; 5xx, 408, 429, timeouts and connection errors are retried."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(
        self, receiver: AlertmanagerReceiver, alerts: list[dict[str, Any]], *, notification_id: str
    ) -> None:
        headers = {
            **receiver.headers,
            "Content-Type": "application/json",
            "User-Agent": "runwatch",
            "X-Runwatch-Notification-Id": notification_id,
        }
        authorization = receiver.authorization()
        if authorization:
            headers["Authorization"] = authorization
        await post(
            self._session, receiver.alerts_url, orjson.dumps(alerts), headers, receiver.timeout_s
        )
