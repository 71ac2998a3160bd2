"""An in-memory implementation of the recorder's state port (and so of noise control's):
the same answers as consumers/store/outbox_state.py gives over SQL (tests/
test_outbox_state.py holds both to one contract), so stages, the policy and the recorder
are tested without a database."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from consumers.model.notifications import (
    LIVE,
    NOT_SENT,
    NotificationGroup,
    NotificationKind,
    NotificationRow,
    NotificationState,
)
from consumers.model.silences import Silence


@dataclass
class MemoryState:
    silences: list[Silence] = field(default_factory=list)
    inhibitions: dict[tuple[str, str], tuple[str, datetime]] = field(default_factory=dict)
    groups: dict[str, NotificationGroup] = field(default_factory=dict)
    rows: dict[str, NotificationRow] = field(default_factory=dict)  # by dedup key

    # -- noise control ---------------------------------------------------------------------

    def active_silences(self, now: datetime) -> Sequence[Silence]:
        return [silence for silence in self.silences if silence.active(now)]

    def record_inhibition(
        self, rule: str, equal_key: str, fingerprint: str, until: datetime
    ) -> None:
        self.inhibitions[(rule, equal_key)] = (fingerprint, until)

    def inhibition_source(self, rule: str, equal_key: str, now: datetime) -> str | None:
        source = self.inhibitions.get((rule, equal_key))
        return source[0] if source is not None and source[1] > now else None

    def is_recorded(self, dedup_key: str) -> bool:
        return dedup_key in self.rows

    def notified_in_group(self, group_key: str, fingerprint: str, since: datetime) -> bool:
        return any(
            row["group_key"] == group_key
            and row["fingerprint"] == fingerprint
            and row["state"] in LIVE
            and row["created_at"] >= since
            for row in self.rows.values()
        )

    def group(self, key: str) -> NotificationGroup | None:
        return self.groups.get(key)

    def schedule_group(self, group: NotificationGroup) -> None:
        known = self.groups.get(group.key)
        if known is None:
            self.groups[group.key] = group
        else:
            self.groups[group.key] = dataclasses.replace(known, next_flush_at=group.next_flush_at)

    def live_count(self, receiver: str, since: datetime, limit: int) -> int:
        count = sum(
            1
            for row in self.rows.values()
            if row["kind"] == NotificationKind.ALERT
            and row["receiver"] == receiver
            and row["created_at"] >= since
            and row["group_key"] is None
            and row["state"] in LIVE
        )
        return min(count, limit)

    # -- the recorder ----------------------------------------------------------------------

    def prepare(
        self,
        keys: Collection[str],
        fingerprints: Collection[str],
        throttles: Collection[tuple[str, str]],
        since: datetime | None,
    ) -> None:
        """Everything is in memory already."""

    def is_throttled(
        self, rule: str, throttle_key: str, receiver: str, dedup_key: str, since: datetime
    ) -> bool:
        return any(
            row["receiver"] == receiver
            and row["dedup_key"] != dedup_key
            and row["rule"] == rule
            and row["throttle_key"] == throttle_key
            and row["state"] not in NOT_SENT
            and row["created_at"] >= since
            for row in self.rows.values()
        )

    def is_followup(self, fingerprint: str, receiver: str, dedup_key: str) -> bool:
        return any(
            row["receiver"] == receiver
            and row["dedup_key"] != dedup_key
            and row["fingerprint"] == fingerprint
            and row["state"] not in NOT_SENT
            for row in self.rows.values()
        )

    def insert(self, row: NotificationRow) -> bool:
        if row["dedup_key"] in self.rows:
            return False
        self.rows[row["dedup_key"]] = row
        return True

    def hold(self, notification_id: str, state: NotificationState, reason: str | None) -> bool:
        for row in self.rows.values():
            if row["id"] == notification_id and row["state"] == NotificationState.SENDING:
                row["state"], row["reason"] = state.value, reason
                return True
        return False

    # -- for the tests ---------------------------------------------------------------------

    def states(self) -> dict[tuple[str, str], tuple[str, str | None]]:
        """(run id, receiver) -> (state, reason) of the alert rows."""
        return {
            (row["run_id"], row["receiver"]): (row["state"], row["reason"])
            for row in self.rows.values()
            if row["kind"] == NotificationKind.ALERT
        }
