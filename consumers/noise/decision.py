"""What noise control decides for one notification row, and what a stage decides on. Values
only: the recorder (consumers/outbox) turns a Decision into rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from consumers.model.alerts import Alert
from consumers.model.notifications import NotificationState
from consumers.noise.routing import Target


@dataclass(frozen=True, slots=True)
class StormWindow:
    """A storm: `receiver` got its limit in the UTC minute [start, end); the recorder makes
    sure one summary row for it exists, due at `end`."""

    receiver: str
    receiver_kind: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    state: NotificationState = NotificationState.PENDING
    reason: str | None = None
    due: datetime | None = None  # a digest's flush time; None = now
    group_key: str | None = None
    storm: StormWindow | None = None  # a storm summary this row needs


@dataclass(frozen=True, slots=True)
class Candidate:
    """One (alert, receiver) pair, as each stage sees it."""

    alert: Alert
    labels: dict[str, str]
    receiver: str  # `owner` already resolved to `owner:<address>`
    receiver_kind: str
    target: Target
    dedup_key: str
