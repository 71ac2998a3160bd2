"""What the dispatcher does differently for noise control: a group's claimed rows become one
digest, storm summaries read the rows they summarise, and `owner:<address>` receivers are
built on the fly. Template contexts (in addition to `notification`):

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
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from consumers.alerts import Alert
from consumers.events import to_utc
from consumers.noise.policy import OWNER_PREFIX
from consumers.noise.tables import notification_groups as g
from consumers.settings import EmailReceiver, ReceiverSettings, Settings
from consumers.store import Store
from consumers.store.outbox import Notification
from consumers.store.schema import notifications as n

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
    if notification.kind == "storm":
        return "storm"
    return "digest" if notification.group_key is not None else ""


def thread_key(notification: Notification) -> str:
    """Digests of one group thread together, each with its own Message-ID."""
    return notification.group_key or notification.fingerprint


def resolve_receiver(settings: Settings, name: str) -> ReceiverSettings | None:
    if name.startswith(OWNER_PREFIX) and len(name) > len(OWNER_PREFIX):
        return ReceiverSettings(email=EmailReceiver(to=[name[len(OWNER_PREFIX) :]]))
    return settings.receivers.get(name)


def _header(notification: Notification) -> dict[str, Any]:
    return {
        "id": notification.id,
        "receiver": notification.receiver,
        "attempt": notification.attempts,
        "created_at": notification.created_at.isoformat(),
    }


def digest_context(
    store: Store, notification: Notification, run_url: Callable[[dict[str, Any]], str | None]
) -> dict[str, Any]:
    members = notification.members or (notification,)
    with store.engine.connect() as conn:
        labels = conn.execute(select(g.c.labels).where(g.c.key == notification.group_key)).scalar()
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
            "labels": dict(labels or {}),
            "count": len(alerts),
        },
        "alerts": alerts,
    }


def storm_context(store: Store, notification: Notification) -> dict[str, Any]:
    start = to_utc_text(notification.alert["window_start"])
    end = to_utc_text(notification.alert["window_end"])
    query = (
        select(n.c.rule, n.c.severity, n.c.run_id, n.c.status, n.c.alert, n.c.event_time)
        .where(
            n.c.receiver == notification.receiver,
            n.c.state == "storm",
            n.c.created_at >= start,
            n.c.created_at < end,
        )
        .order_by(n.c.event_time, n.c.run_id, n.c.id)
    )
    with store.engine.connect() as conn:
        rows = list(conn.execute(query))
    listed = []
    for row in rows[:_STORM_LISTED]:
        event = row.alert.get("event", {})
        listed.append(
            {
                "rule": row.rule,
                "severity": row.severity,
                "run_id": row.run_id,
                "status": row.status,
                "experiment": event.get("ExperimentName"),
                "workspace": event.get("WorkspaceName"),
                "time": to_utc(row.event_time).isoformat(),
            }
        )
    return {
        "notification": _header(notification),
        "storm": {
            "receiver": notification.receiver,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "count": len(rows),
            "by_rule": dict(Counter(row.rule for row in rows)),
            "alerts": listed,
        },
    }


def to_utc_text(text: str) -> datetime:
    return to_utc(datetime.fromisoformat(text))
