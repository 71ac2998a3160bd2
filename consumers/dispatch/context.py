"""The template context, defined in one place: what every email and webhook template sees.

The dispatcher, digest and storm rendering, and anything that previews a template (tests,
tooling) build it here and nowhere else. Pure: the notification row and what was read for
it (the run now, the group's labels, the rows a storm held back) in, a JSON-able dict out;
the reads happen at the delivery stage's edge (consumers.dispatch.delivery).

One alert (templates `email/*`, `webhook/<format>.json.j2`):

    notification  {id, receiver, attempt, created_at}
    alert         {rule, severity (0-4), severity_name, labels, annotations, fingerprint,
                   kind, instance, status, summary, group, value, details}
    event         the event's columns (TimeGenerated, RunId, Status, ExperimentName, Tags, ...)
    run           the run now (runId, status, startTimeUtc, durationSeconds, ...), or None
    timeline      [{status, time, seconds_in_state, message}] oldest first
    children      {total, by_status: {status: count}, failed: [run records, at most 10]}
    run_url       a link to the run, or None

A digest (`email/digest/*`, `webhook/<format>.digest.json.j2`): `notification` and

    group         {key, receiver, labels: {group_by label: value}, count}
    alerts        [{alert, event, run_url}] by event time, then run id (alert and event as
                  in a one-alert notification)

A storm summary (`email/storm/*`, `webhook/<format>.storm.json.j2`): `notification` and

    storm         {receiver, window_start, window_end, count, by_rule: {rule: count},
                   alerts: [{rule, severity, run_id, status, experiment, workspace, cause,
                   time}]
                   at most 50}
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from consumers.model.alerts import Alert
from consumers.model.events import to_utc
from consumers.model.notifications import Notification, NotificationKind
from consumers.store.queries import RunDetail

log = logging.getLogger(__name__)

MAX_FAILED_CHILDREN = 10
STORM_LISTED = 50


class RunUrl:
    """`run_url_template` filled from an event's columns (URL-quoted), or None when there
    is no template or the event lacks a field it names."""

    def __init__(self, template: str | None) -> None:
        self.template = template

    def __call__(self, event: Mapping[str, Any]) -> str | None:
        template = self.template
        if not template:
            return None
        values = {k: quote(str(v), safe="") for k, v in event.items() if v is not None}
        try:
            return template.format_map(values)
        except (KeyError, IndexError, ValueError) as exc:
            log.warning("run_url_template %r cannot be filled: %s", template, exc)
            return None


def header(notification: Notification) -> dict[str, Any]:
    """The `notification` part, common to every context."""
    return {
        "id": notification.id,
        "receiver": notification.receiver,
        "attempt": notification.attempts,
        "created_at": notification.created_at.isoformat(),
    }


def variant(notification: Notification) -> str:
    """Which context (and template set) a notification gets: "" (one alert), "digest" or
    "storm"."""
    if notification.kind == NotificationKind.STORM:
        return "storm"
    return "digest" if notification.group_key is not None else ""


def alert_context(
    notification: Notification, detail: RunDetail | None, run_url: RunUrl
) -> dict[str, Any]:
    """One alert's context; `detail` is the run as read at send time (so the mail shows its
    timeline and children as they are now), None if the store does not know the run."""
    alert = Alert.model_validate(notification.alert)
    event = alert.event.model_dump(mode="json")
    timeline: list[dict[str, Any]] = []
    children: dict[str, Any] = {"total": 0, "by_status": {}, "failed": []}
    run: dict[str, Any] | None = None
    if detail is not None:
        run = detail.run
        timeline = [
            {
                "status": entry.status,
                "time": entry.time.isoformat(),
                "seconds_in_state": entry.seconds_in_state,
                "message": entry.message,
            }
            for entry in detail.timeline
        ]
        counts = Counter(child["status"] for child in detail.children)
        failed = [c for c in detail.children if c["status"] == "Failed"]
        children = {
            "total": len(detail.children),
            "by_status": dict(counts),
            "failed": failed[:MAX_FAILED_CHILDREN],
        }
    return {
        "notification": header(notification),
        "alert": alert.context(),
        "event": event,
        "run": run,
        "timeline": timeline,
        "children": children,
        "run_url": run_url(event),
    }


def digest_context(
    notification: Notification, labels: Mapping[str, str], run_url: RunUrl
) -> dict[str, Any]:
    """A group's digest; `labels` are the group's group_by values
    (consumers.store.digests.group_labels)."""
    members = notification.members or (notification,)
    alerts = []
    for member in members:
        alert = Alert.model_validate(member.alert)
        event = alert.event.model_dump(mode="json")
        alerts.append({"alert": alert.context(), "event": event, "run_url": run_url(event)})
    return {
        "notification": header(notification),
        "group": {
            "key": notification.group_key,
            "receiver": notification.receiver,
            "labels": dict(labels),
            "count": len(alerts),
        },
        "alerts": alerts,
    }


def storm_window(notification: Notification) -> tuple[datetime, datetime]:
    """The minute a storm summary covers."""
    return (
        to_utc(datetime.fromisoformat(notification.alert["window_start"])),
        to_utc(datetime.fromisoformat(notification.alert["window_end"])),
    )


def storm_context(notification: Notification, stormed: Sequence[Notification]) -> dict[str, Any]:
    """A storm summary; `stormed` are the rows held back in its window, by event time then
    run id (consumers.store.digests.stormed)."""
    start, end = storm_window(notification)
    listed = []
    for row in stormed[:STORM_LISTED]:
        event = row.alert.get("event", {})
        listed.append(
            {
                "rule": row.rule,
                "severity": row.severity,
                "run_id": row.run_id,
                "status": row.status,
                "experiment": event.get("ExperimentName"),
                "workspace": event.get("WorkspaceName"),
                "cause": event.get("cause"),
                "time": row.event_time.isoformat(),
            }
        )
    return {
        "notification": header(notification),
        "storm": {
            "receiver": notification.receiver,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "count": len(stormed),
            "by_rule": dict(Counter(row.rule for row in stormed)),
            "alerts": listed,
        },
    }
