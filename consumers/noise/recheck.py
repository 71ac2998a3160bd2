"""Silences and inhibitions are checked again when a digest goes out, as Alertmanager does at
notification time: a silence added while a group waits (group_wait, group_interval) keeps
its alerts out of the digest. The rows taken out are marked `silenced` or `inhibited` (they
were claimed, so no other dispatcher holds them)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import update

from consumers.alerts import Alert
from consumers.noise.matchers import alert_labels
from consumers.noise.policy import NoisePolicy
from consumers.noise.silences import active_silences, silenced_by
from consumers.store import Store
from consumers.store.outbox import Notification
from consumers.store.schema import notifications as n


def recheck(
    store: Store, policy: NoisePolicy, digest: Notification, now: datetime
) -> Notification | None:
    """The digest with only the members still to be sent, or None when none is."""
    keep: list[Notification] = []
    with store.write_lock, store.engine.begin() as conn:
        silences = active_silences(conn, now)
        for member in digest.members or (digest,):
            alert = Alert.model_validate(member.alert)
            labels = alert_labels(alert)
            state, reason = None, None
            if policy.inhibitor and (
                rule := policy.inhibitor.inhibited_by(conn, alert, labels, now)
            ):
                state, reason = "inhibited", f"inhibited:{rule}"
            elif (silence := silenced_by(silences, labels)) is not None:
                state, reason = "silenced", f"silence:{silence}"
            if state is None:
                keep.append(member)
                continue
            conn.execute(
                update(n)
                .where(n.c.id == member.id, n.c.state == "sending")
                .values(state=state, reason=reason, claim=None, lease_until=None)
            )
            policy.count(state)
    if not keep:
        return None
    return dataclasses.replace(keep[0], members=tuple(keep))
