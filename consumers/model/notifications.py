"""A notification row's state and kind, and the named sets of states, defined once.

A notification's life: pending -> sending (claimed, with a lease) -> sent, or back to pending
(a retry), or dead. The other states are recorded at once and never sent: throttled (the
rule's throttle), suppressed (stale: older than the replay horizon) and the five that noise
control decides (inhibited, silenced, muted, repeat, storm).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypedDict


class NotificationState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"
    THROTTLED = "throttled"
    INHIBITED = "inhibited"
    SILENCED = "silenced"
    MUTED = "muted"
    REPEAT = "repeat"
    STORM = "storm"
    SUPPRESSED = "suppressed"


State = NotificationState

# Noise control's decisions: recorded, counted in runwatch_notifications_suppressed_total,
# never sent.
NOISE_SUPPRESSED = frozenset(
    {State.INHIBITED, State.SILENCED, State.MUTED, State.REPEAT, State.STORM}
)
# Recorded and never sent: such rows neither throttle nor thread later ones.
NOT_SENT = frozenset({State.THROTTLED, State.SUPPRESSED, *NOISE_SUPPRESSED})
# Sent or on the way: what repeat_interval and storm control count.
LIVE = frozenset({State.PENDING, State.SENDING, State.SENT})
# What `runwatch notifications retry ID` makes due again.
RETRYABLE = frozenset({State.DEAD, State.PENDING})


class NotificationKind(StrEnum):
    ALERT = "alert"
    STORM = "storm"  # a storm summary: how many notifications one receiver was spared


def silence_reason(silence_id: str) -> str:
    """The reason of a row a silence kept back (`silence list` counts rows by it)."""
    return f"silence:{silence_id}"


class NotificationRow(TypedDict):
    """One row of the notifications table as the recorder writes it (the store adds the
    delivery columns: lease, claim, sent_at, last_error)."""

    id: str
    dedup_key: str
    rule: str
    severity: int
    fingerprint: str
    throttle_key: str
    receiver: str
    receiver_type: str
    followup: bool
    state: str
    attempts: int
    run_id: str
    status: str
    event_time: datetime
    alert: dict[str, Any]
    created_at: datetime
    next_attempt_at: datetime
    reason: str | None
    kind: str
    group_key: str | None


def _utc(value: datetime) -> datetime:
    """SQLite hands times back naive (they are stored as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Notification:
    """A notification row as read back: what the dispatcher sends and the CLI lists."""

    id: str
    rule: str
    severity: int
    fingerprint: str
    receiver: str
    receiver_type: str
    followup: bool
    state: NotificationState
    attempts: int
    run_id: str
    status: str
    event_time: datetime
    alert: dict[str, Any]
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    reason: str | None
    last_error: str | None
    kind: NotificationKind = NotificationKind.ALERT
    group_key: str | None = None
    members: tuple[Notification, ...] = ()  # a digest: every row it sends (itself first)
    lease_until: datetime | None = None  # a claimed row's: when another replica may take it

    @property
    def ids(self) -> list[str]:
        """The rows this send marks: a digest's members, else itself."""
        return [m.id for m in self.members] or [self.id]

    @classmethod
    def from_row(cls, row: Any) -> Notification:
        return cls(
            id=row.id,
            rule=row.rule,
            severity=row.severity,
            fingerprint=row.fingerprint,
            receiver=row.receiver,
            receiver_type=row.receiver_type,
            followup=bool(row.followup),
            state=NotificationState(row.state),
            attempts=row.attempts,
            run_id=row.run_id,
            status=row.status,
            event_time=_utc(row.event_time),
            alert=row.alert,
            created_at=_utc(row.created_at),
            next_attempt_at=_utc(row.next_attempt_at),
            sent_at=None if row.sent_at is None else _utc(row.sent_at),
            reason=row.reason,
            last_error=row.last_error,
            kind=NotificationKind(row.kind),
            group_key=row.group_key,
            lease_until=None if row.lease_until is None else _utc(row.lease_until),
        )


@dataclass(frozen=True, slots=True)
class NotificationGroup:
    """Grouping's state of one (route, receiver, group_by values): when its next digest goes
    out (None: nothing waiting) and when the last one did."""

    key: str
    receiver: str
    route: str
    labels: dict[str, str]
    next_flush_at: datetime | None
    last_flush_at: datetime | None
