"""Building notification rows: an alert's row for one receiver, and a storm summary's."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from consumers.model.alerts import Alert
from consumers.model.notifications import NotificationKind, NotificationRow, NotificationState
from consumers.noise.decision import Decision, StormWindow
from consumers.noise.storm import STORM_RULE

UNKNOWN_KIND = "unknown"  # receiver_type of a row whose receiver is not configured


def alert_row(
    alert: Alert,
    alert_json: dict[str, Any],
    receiver: str,
    receiver_kind: str | None,
    dedup_key: str,
    decision: Decision,
    followup: bool,
    now: datetime,
) -> NotificationRow:
    event = alert.event
    return {
        "id": uuid.uuid4().hex,
        "dedup_key": dedup_key,
        "rule": alert.rule,
        "severity": alert.severity,
        "fingerprint": alert.fingerprint,
        "throttle_key": alert.throttle_key,
        "receiver": receiver,
        "receiver_type": receiver_kind or UNKNOWN_KIND,
        "followup": followup,
        "state": decision.state.value,
        "attempts": 0,
        "run_id": event.RunId,
        "status": event.Status,
        "event_time": event.TimeGenerated,
        "alert": alert_json,
        "created_at": now,
        "next_attempt_at": decision.due or now,
        "reason": decision.reason,
        "kind": NotificationKind.ALERT.value,
        "group_key": decision.group_key,
    }


def storm_row(storm: StormWindow, now: datetime) -> NotificationRow:
    """One summary per receiver and minute (its dedup key), due when the minute ends."""
    fingerprint = hashlib.blake2b(f"storm|{storm.receiver}".encode(), digest_size=12)
    return {
        "id": uuid.uuid4().hex,
        "dedup_key": f"storm|{storm.receiver}|{storm.start.isoformat()}",
        "rule": STORM_RULE,
        "severity": 2,
        "fingerprint": fingerprint.hexdigest(),
        "throttle_key": "",
        "receiver": storm.receiver,
        "receiver_type": storm.receiver_kind,
        "followup": False,
        "state": NotificationState.PENDING.value,
        "attempts": 0,
        "run_id": "",
        "status": "",
        "event_time": storm.start,
        "alert": {"window_start": storm.start.isoformat(), "window_end": storm.end.isoformat()},
        "created_at": now,
        "next_attempt_at": storm.end,
        "reason": None,
        "kind": NotificationKind.STORM.value,
        "group_key": None,
    }
