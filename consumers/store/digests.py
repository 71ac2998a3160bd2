"""The dispatcher's side of grouping and storm control in SQL: a claim takes a group's due
rows together (a claim limit must not split a digest), a digest shows its group's labels,
a storm summary lists the rows it held back. consumers/dispatch/context.py builds the template
contexts from what these return."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select, update

from consumers.model.notifications import Notification, NotificationState
from consumers.store.schema import notification_groups as g
from consumers.store.schema import notifications as n

if TYPE_CHECKING:
    from consumers.store.engine import Store


def claim_members(conn: Connection, ids: Sequence[str], now: datetime) -> list[str]:
    """The claimed rows plus the other due pending rows of their groups; marks those groups
    flushed now."""
    keys = [
        key
        for key in conn.execute(
            select(n.c.group_key).where(n.c.id.in_(ids), n.c.group_key.is_not(None)).distinct()
        ).scalars()
    ]
    if not keys:
        return list(ids)
    more = conn.execute(
        select(n.c.id).where(
            n.c.group_key.in_(keys),
            n.c.state == NotificationState.PENDING.value,
            n.c.next_attempt_at <= now,
        )
    ).scalars()
    conn.execute(update(g).where(g.c.key.in_(keys)).values(next_flush_at=None, last_flush_at=now))
    return list(dict.fromkeys([*ids, *more]))


def group_labels(store: Store, key: str | None) -> dict[str, str]:
    """A group's group_by values, for its digest."""
    with store.engine.connect() as conn:
        labels = conn.execute(select(g.c.labels).where(g.c.key == key)).scalar()
    return dict(labels or {})


def stormed(store: Store, receiver: str, start: datetime, end: datetime) -> list[Notification]:
    """The rows storm control held back for `receiver` in [start, end), by event time."""
    query = (
        select(n)
        .where(
            n.c.receiver == receiver,
            n.c.state == NotificationState.STORM.value,
            n.c.created_at >= start,
            n.c.created_at < end,
        )
        .order_by(n.c.event_time, n.c.run_id, n.c.id)
    )
    with store.engine.connect() as conn:
        return [Notification.from_row(row) for row in conn.execute(query)]
