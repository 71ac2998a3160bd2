"""The recorder's state port: noise control's (consumers/noise/state.py) plus the outbox
reads a row's state depends on, the insert, and the send-time hold of a digest's member."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from consumers.model.notifications import NotificationRow, NotificationState
from consumers.noise.state import NoiseState


class OutboxState(NoiseState, Protocol):
    def is_throttled(
        self, rule: str, throttle_key: str, receiver: str, dedup_key: str, since: datetime
    ) -> bool:
        """Whether another row of this rule and throttle key for `receiver`, not in a
        not-sent state, was created at or after `since`."""
        ...

    def is_followup(self, fingerprint: str, receiver: str, dedup_key: str) -> bool:
        """Whether another row of this alert fingerprint for `receiver` was (or will be)
        sent: the new one threads under it."""
        ...

    def insert(self, row: NotificationRow) -> bool:
        """Insert unless a row with its dedup key exists; True when inserted."""
        ...

    def hold(self, notification_id: str, state: NotificationState, reason: str | None) -> bool:
        """A claimed (sending) row that is not to be sent after all: record why."""
        ...
