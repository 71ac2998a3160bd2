"""What the dispatcher does differently for noise control: a group's claimed rows become one
digest, storm summaries list the rows they summarise, and `owner:<address>` receivers are
built on the fly. Values in, template contexts out: the dispatcher reads the group's labels
and the stormed rows from the store and hands them in. Template contexts (in addition to
`notification`):

    digest  group     {key, receiver, labels: {group_by label: value}, count}
            alerts    [{alert, event, run_url}] by event time, then run id (alert and
                      event as in a one-alert notification)
    storm   storm     {receiver, window_start, window_end, count, by_rule: {rule: count},
                       alerts: [{rule, severity, run_id, status, experiment, workspace,
                       time}] at most 50}
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from consumers.config.receivers import EmailReceiver, ReceiverSettings
from consumers.config.settings import Settings
from consumers.model.alerts import Alert
from consumers.model.events import to_utc
from consumers.model.notifications import Notification, NotificationKind
from consumers.model.receivers import owner_address

_STORM_LISTED = 50


def bundle(claimed: Sequence[Notification]) -> list[Notification]:
    """One Notification per group (its oldest row, carrying every row as `members`)."""
    groups: dict[str, list[Notification]] = {}
    out: list[Notification | str] = []
    for notification in claimed:
        key = notification.group_key
        if key is None:
            out.append(notification)
        else:
            if key not in groups:
                groups[key] = []
                out.append(key)
            groups[key].append(notification)
    result = []
    for item in out:
        if isinstance(item, str):
            members = sorted(groups[item], key=lambda m: (m.event_time, m.run_id, m.id))
            result.append(dataclasses.replace(members[0], members=tuple(members)))
        else:
            result.append(item)
    return result


def variant(notification: Notification) -> str:
    """The template set: "" (one alert), "digest" or "storm"."""
    if notification.kind == NotificationKind.STORM:
        return "storm"
    return "digest" if notification.group_key is not None else ""


def thread_key(notification: Notification) -> str:
    """Digests of one group thread together, each with its own Message-ID."""
    return notification.group_key or notification.fingerprint


def resolve_receiver(settings: Settings, name: str) -> ReceiverSettings | None:
    address = owner_address(name)
    if address is not None:
        return ReceiverSettings(email=EmailReceiver(to=[address]))
    return settings.receivers.get(name)


def _header(notification: Notification) -> dict[str, Any]:
    return {
        "id": notification.id,
        "receiver": notification.receiver,
        "attempt": notification.attempts,
        "created_at": notification.created_at.isoformat(),
    }


def digest_context(
    notification: Notification,
    labels: Mapping[str, str],
    run_url: Callable[[dict[str, Any]], str | None],
) -> dict[str, Any]:
    """`labels`: the group's group_by values (consumers.store.noise_state.group_labels)."""
    members = notification.members or (notification,)
    alerts = []
    for member in members:
        alert = Alert.model_validate(member.alert)
        event = alert.event.model_dump(mode="json")
        alerts.append({"alert": alert.context(), "event": event, "run_url": run_url(event)})
    return {
        "notification": _header(notification),
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
        to_utc_text(notification.alert["window_start"]),
        to_utc_text(notification.alert["window_end"]),
    )


def storm_context(notification: Notification, stormed: Sequence[Notification]) -> dict[str, Any]:
    """`stormed`: the rows held back in the window, by event time then run id
    (consumers.store.noise_state.stormed)."""
    start, end = storm_window(notification)
    listed = []
    for row in stormed[:_STORM_LISTED]:
        event = row.alert.get("event", {})
        listed.append(
            {
                "rule": row.rule,
                "severity": row.severity,
                "run_id": row.run_id,
                "status": row.status,
                "experiment": event.get("ExperimentName"),
                "workspace": event.get("WorkspaceName"),
                "time": row.event_time.isoformat(),
            }
        )
    return {
        "notification": _header(notification),
        "storm": {
            "receiver": notification.receiver,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "count": len(stormed),
            "by_rule": dict(Counter(row.rule for row in stormed)),
            "alerts": listed,
        },
    }


def to_utc_text(text: str) -> datetime:
    return to_utc(datetime.fromisoformat(text))
