"""Grouping: alerts for one receiver whose `group_by` labels have the same values are sent
together, as one digest. The timing follows Alertmanager's:

- group_wait: a new group waits this long after its first alert before its first digest,
  so that alerts arriving together (a pipeline failing step after step) go out as one.
- group_interval: after a digest, alerts that join the group wait until at least this long
  after that digest; the next digest lists only them.
- repeat_interval: an alert (same rule and throttle key, i.e. fingerprint) already notified in
  the group within this long is recorded as `repeat` and not listed again. A group quiet for
  longer than repeat_interval starts afresh (waits group_wait again). A resolution is never
  a repeat of its firing.

Alertmanager also re-sends a group's still-firing alerts every repeat_interval; runwatch does
not re-send anything by itself.

A group's rows share a `group_key` and its flush time as `next_attempt_at`; the dispatcher
claims them together and sends one digest.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import orjson

from consumers.model.notifications import NotificationGroup, NotificationState
from consumers.noise.decision import Candidate, Decision
from consumers.noise.routing import Target
from consumers.noise.state import NoiseState


def group_labels(target: Target, labels: dict[str, str]) -> dict[str, str] | None:
    """None when the target does not group (no group_by, or `...`: every label)."""
    if not target.group_by or "..." in target.group_by:
        return None
    return {name: labels.get(name, "") for name in target.group_by}


def group_key(target: Target, receiver: str, values: dict[str, str]) -> str:
    text = orjson.dumps([target.route, receiver, values], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=12).hexdigest()


def next_flush(group: NotificationGroup | None, target: Target, now: datetime) -> datetime:
    """When the group's next digest goes out, given its state."""
    if group is None:
        return now + timedelta(seconds=target.group_wait)
    if group.next_flush_at is not None:
        return group.next_flush_at
    last = group.last_flush_at
    if last is None or now - last >= timedelta(seconds=target.repeat_interval):
        return now + timedelta(seconds=target.group_wait)
    return max(now, last + timedelta(seconds=target.group_interval))


class Grouper:
    """The grouping stage of one batch: each group is scheduled once per batch. Ungrouped
    targets pass on (to storm control)."""

    def __init__(self) -> None:
        self._flushes: dict[str, datetime] = {}

    def decide(self, candidate: Candidate, state: NoiseState, now: datetime) -> Decision | None:
        target = candidate.target
        values = group_labels(target, candidate.labels)
        if values is None:
            return None
        if state.is_recorded(candidate.dedup_key):
            return Decision()  # a replay (the insert keeps the row): leave the group be
        key = group_key(target, candidate.receiver, values)
        alert = candidate.alert
        since = now - timedelta(seconds=target.repeat_interval)
        if alert.status == "firing" and state.notified_in_group(key, alert.fingerprint, since):
            return Decision(NotificationState.REPEAT, "repeat", group_key=key)
        due = self._flushes.get(key)
        if due is None:
            group = state.group(key)
            due = next_flush(group, target, now)
            if group is None or group.next_flush_at is None:
                state.schedule_group(
                    NotificationGroup(
                        key=key,
                        receiver=candidate.receiver,
                        route=target.route,
                        labels=values,
                        next_flush_at=due,
                        last_flush_at=None if group is None else group.last_flush_at,
                    )
                )
            self._flushes[key] = due
        return Decision(due=due, group_key=key)
