"""The recorder's state port: noise control's (consumers/noise/state.py) plus the outbox
reads a row's state depends on, the insert, and the send-time hold of a digest's member."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol

from consumers.model.notifications import NotificationRow, NotificationState
from consumers.noise.state import NoiseState


class OutboxState(NoiseState, Protocol):
    def prepare(
        self,
        keys: Collection[str],
        fingerprints: Collection[str],
        throttles: Collection[tuple[str, str]],
        since: datetime | None,
    ) -> None:
        """The batch's candidates before any is decided: their dedup keys, their alerts'
        fingerprints, the (rule, throttle key) of the throttled ones and the earliest
        throttle window start. A state may load what the decisions will read (a batch's
        rows in one look-up per table) or ignore it."""
        ...

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
