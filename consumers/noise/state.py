"""The state port: everything noise control reads or writes beyond the alert in hand, as a
Protocol that noise/ declares and others implement. consumers/store/noise_state.py does it
in SQL, inside the transaction that writes the notification rows (so a decision sees the
rows written before it in the same batch); tests do it in memory. That keeps every stage a
function of values and this state, testable without a database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from consumers.model.notifications import NotificationGroup
from consumers.model.silences import Silence


class NoiseState(Protocol):
    def active_silences(self, now: datetime) -> Sequence[Silence]:
        """Silences with starts_at <= now < ends_at."""
        ...

    def record_inhibition(
        self, rule: str, equal_key: str, fingerprint: str, until: datetime
    ) -> None:
        """An inhibition source: alert `fingerprint` holds rule `rule` for the `equal`
        label values `equal_key` until `until` (replacing an earlier source of that key)."""
        ...

    def inhibition_source(self, rule: str, equal_key: str, now: datetime) -> str | None:
        """The fingerprint of the source holding (rule, equal_key) at `now`, if any."""
        ...

    def is_recorded(self, dedup_key: str) -> bool:
        """Whether a notification row with this dedup key exists (a Kafka replay)."""
        ...

    def notified_in_group(self, group_key: str, fingerprint: str, since: datetime) -> bool:
        """Whether the group has a live (pending, sending, sent) row of this alert
        fingerprint created at or after `since` (repeat_interval)."""
        ...

    def group(self, key: str) -> NotificationGroup | None:
        """A notification group's flush times and labels."""
        ...

    def schedule_group(self, group: NotificationGroup) -> None:
        """Create the group, or set its next_flush_at."""
        ...

    def live_count(self, receiver: str, since: datetime, limit: int) -> int:
        """Live ungrouped alert rows for `receiver` created at or after `since`, counted up
        to `limit` (storm control only needs to know whether the limit is reached)."""
        ...
