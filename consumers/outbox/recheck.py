"""Silences and inhibitions are checked again when a digest goes out, as Alertmanager does at
notification time: a silence added while a group waits (group_wait, group_interval) keeps
its alerts out of the digest. The members taken out are recorded `silenced` or `inhibited`
(they were claimed, so no other dispatcher holds them)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from consumers.model.alerts import Alert
from consumers.model.notifications import Notification
from consumers.noise.policy import NoisePolicy
from consumers.outbox.state import OutboxState


def recheck(
    state: OutboxState, policy: NoisePolicy, digest: Notification, now: datetime
) -> Notification | None:
    """The digest with only the members still to be sent, or None when none is."""
    members = digest.members or (digest,)
    alerts = [Alert.model_validate(member.alert) for member in members]
    keep: list[Notification] = []
    for member, decision in zip(members, policy.recheck(state, alerts, now), strict=True):
        if decision is None:
            keep.append(member)
        elif state.hold(member.id, decision.state, decision.reason):
            policy.count(decision.state)
    if not keep:
        return None
    return dataclasses.replace(keep[0], members=tuple(keep))
