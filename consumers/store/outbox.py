"""The notifications outbox as the dispatcher and the CLI see it: claim due rows, mark them.
The rows are written by the recorder (consumers/outbox), through
consumers/store/outbox_state.py.

A notification's life: pending -> sending (claimed, with a lease) -> sent, or back to pending
with a later next_attempt_at (transient failure), or dead (permanent failure, too old, or a
template error). A lease that expires (the dispatcher died mid-send) returns the row to
pending: that, and only that, can send a notification twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select, update

from consumers.model.events import to_utc
from consumers.model.notifications import RETRYABLE, Notification, NotificationState
from consumers.model.redact import redact
from consumers.store.digests import claim_members
from consumers.store.schema import notifications as n

if TYPE_CHECKING:
    from consumers.store.engine import Store

__all__ = ["Notification", "Outbox"]

_PENDING = NotificationState.PENDING.value
_SENDING = NotificationState.SENDING.value


class Outbox:
    """The dispatcher's and the CLI's view of the notifications table."""

    def __init__(self, store: Store) -> None:
        self._engine = store.engine
        self._lock = store.write_lock

    def claim(self, now: datetime, limit: int, lease_s: float) -> list[Notification]:
        """Due rows, each claimed by exactly one caller: FOR UPDATE SKIP LOCKED on
        PostgreSQL; on SQLite the database-wide write lock does the same."""
        token = uuid.uuid4().hex
        with self._lock, self._engine.begin() as conn:
            due = (
                select(n.c.id)
                .where(n.c.state == _PENDING, n.c.next_attempt_at <= now)
                .order_by(n.c.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            ids = list(conn.execute(due).scalars())
            if not ids:
                return []
            ids = claim_members(conn, ids, now)
            conn.execute(
                update(n)
                .where(n.c.id.in_(ids), n.c.state == _PENDING)
                .values(
                    state=_SENDING,
                    claim=token,
                    lease_until=now + timedelta(seconds=lease_s),
                    attempts=n.c.attempts + 1,
                )
            )
            rows = conn.execute(select(n).where(n.c.claim == token, n.c.state == _SENDING))
            return [Notification.from_row(row) for row in rows]

    def _set(self, notification_id: str, **values: Any) -> int:
        with self._lock, self._engine.begin() as conn:
            result = conn.execute(update(n).where(n.c.id == notification_id).values(**values))
            return max(result.rowcount, 0)

    def mark_sent(self, notification_id: str, now: datetime) -> None:
        self.mark_all_sent([notification_id], now)

    def mark_all_sent(self, notification_ids: Sequence[str], now: datetime) -> None:
        """Several in one transaction: the dispatcher's group commit."""
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                update(n)
                .where(n.c.id.in_(notification_ids))
                .values(state="sent", sent_at=now, lease_until=None, claim=None)
            )

    def mark_sent_at(self, marks: Sequence[tuple[str, datetime]]) -> None:
        """Each row sent at its own time, in one transaction (consumers/store/sent_marks.py
        folding its journal in). Whatever state a row is in now: the receiver accepted it."""
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                update(n)
                .where(n.c.id == bindparam("p_id"))
                .values(state="sent", sent_at=bindparam("p_at"), lease_until=None, claim=None),
                [{"p_id": notification_id, "p_at": at} for notification_id, at in marks],
            )

    def mark_retry(self, notification_id: str, at: datetime, reason: str, error: str) -> None:
        self._set(
            notification_id,
            state="pending",
            next_attempt_at=at,
            lease_until=None,
            claim=None,
            reason=reason,
            last_error=redact(error)[:4000],  # no credential is stored
        )

    def mark_dead(self, notification_id: str, reason: str, error: str) -> None:
        self._set(
            notification_id,
            state="dead",
            lease_until=None,
            claim=None,
            reason=reason,
            last_error=redact(error)[:4000],  # no credential is stored
        )

    def release_expired(self, now: datetime) -> int:
        """Rows whose dispatcher died mid-send go back to pending (the documented window)."""
        with self._lock, self._engine.begin() as conn:
            result = conn.execute(
                update(n)
                .where(n.c.state == _SENDING, n.c.lease_until < now)
                .values(state=_PENDING, claim=None, lease_until=None, next_attempt_at=now)
            )
            return max(result.rowcount, 0)

    def retry(self, notification_id: str, now: datetime) -> bool:
        """`runwatch notifications retry ID`: a dead (or waiting) one is due again now, with
        its age and attempts counted afresh (notify.max_age_s, notify.max_attempts)."""
        with self._lock, self._engine.begin() as conn:
            result = conn.execute(
                update(n)
                .where(n.c.id == notification_id, n.c.state.in_([s.value for s in RETRYABLE]))
                .values(
                    state=_PENDING, next_attempt_at=now, created_at=now, reason=None, attempts=0
                )
            )
            return result.rowcount == 1

    def next_due(self) -> datetime | None:
        with self._engine.connect() as conn:
            value = conn.execute(
                select(func.min(n.c.next_attempt_at)).where(n.c.state == _PENDING)
            ).scalar()
        return None if value is None else to_utc(value)

    def depth(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(n.c.state, func.count()).group_by(n.c.state))
            counts = {state.value: 0 for state in NotificationState}
            counts.update({state: int(count) for state, count in rows})
            return counts

    def list(self, *, state: str | None = None, limit: int = 50) -> list[Notification]:
        query = select(n).order_by(n.c.created_at.desc(), n.c.id).limit(limit)
        if state is not None:
            query = query.where(n.c.state == state)
        with self._engine.connect() as conn:
            return [Notification.from_row(row) for row in conn.execute(query)]

    def count(self, *, state: str | None = None) -> int:
        """How many notifications there are (in `state`), for a table cut by --limit."""
        query = select(func.count()).select_from(n)
        if state is not None:
            query = query.where(n.c.state == state)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def get(self, notification_id: str) -> Notification | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(n).where(n.c.id == notification_id)).first()
        return None if row is None else Notification.from_row(row)
