"""The notifications outbox: rows written with the events that raised them, claimed and
marked by the dispatcher.

A notification's life: pending -> sending (claimed, with a lease) -> sent, or back to pending
with a later next_attempt_at (transient failure), or dead (permanent failure, too old, or a
template error). A lease that expires (the dispatcher died mid-send) returns the row to
pending: that, and only that, can send a notification twice.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, bindparam, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from consumers.alerts import Alert
from consumers.events import to_utc
from consumers.noise.decision import SUPPRESSED, Decision
from consumers.store.schema import notifications as n

if TYPE_CHECKING:
    from consumers.noise.policy import NoisePolicy
    from consumers.store.engine import Store

STATES = (
    "pending",
    "sending",
    "sent",
    "dead",
    "throttled",
    "inhibited",
    "silenced",
    "muted",
    "repeat",
    "storm",
    "suppressed",  # reason stale: older than the replay horizon
)

# rows that neither throttle nor thread later ones
_NOT_SENT = ("throttled", "suppressed", *SUPPRESSED)


@dataclass(frozen=True, slots=True)
class Notification:
    id: str
    rule: str
    severity: int
    fingerprint: str
    receiver: str
    receiver_type: str
    followup: bool
    state: str
    attempts: int
    run_id: str
    status: str
    event_time: datetime
    alert: dict[str, Any]
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    reason: str | None
    last_error: str | None
    kind: str = "alert"  # or "storm": a storm summary
    group_key: str | None = None
    members: tuple[Notification, ...] = ()  # a digest: every row it sends (itself first)

    @property
    def ids(self) -> list[str]:
        """The rows this send marks: a digest's members, else itself."""
        return [m.id for m in self.members] or [self.id]

    @classmethod
    def from_row(cls, row: Any) -> Notification:
        def t(value: datetime | None) -> datetime | None:
            return None if value is None else to_utc(value)

        return cls(
            id=row.id,
            rule=row.rule,
            severity=row.severity,
            fingerprint=row.fingerprint,
            receiver=row.receiver,
            receiver_type=row.receiver_type,
            followup=bool(row.followup),
            state=row.state,
            attempts=row.attempts,
            run_id=row.run_id,
            status=row.status,
            event_time=to_utc(row.event_time),
            alert=row.alert,
            created_at=to_utc(row.created_at),
            next_attempt_at=to_utc(row.next_attempt_at),
            sent_at=t(row.sent_at),
            reason=row.reason,
            last_error=row.last_error,
            kind=row.kind,
            group_key=row.group_key,
        )


@functools.cache
def _statements(dialect: str) -> tuple[Any, Any, Any]:
    """Built once per dialect and fed parameters: building a SQLAlchemy statement per row
    cost more than running it (measured: a fifth of a burst's CPU)."""
    others = and_(n.c.receiver == bindparam("p_receiver"), n.c.dedup_key != bindparam("p_key"))
    throttled = select(
        exists().where(
            others,
            n.c.rule == bindparam("p_rule"),
            n.c.throttle_key == bindparam("p_throttle_key"),
            n.c.state.not_in(_NOT_SENT),
            n.c.created_at >= bindparam("p_since", type_=n.c.created_at.type),
        )
    )
    followup = select(
        exists().where(
            others, n.c.fingerprint == bindparam("p_fingerprint"), n.c.state.not_in(_NOT_SENT)
        )
    )
    module: Any = postgresql if dialect == "postgresql" else sqlite
    # SQLAlchemy 2.1 reports -1 for a Core INSERT on psycopg unless asked
    insert = (
        module.insert(n)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .execution_options(preserve_rowcount=True)
    )
    return throttled, followup, insert


def insert_notifications(
    conn: Connection,
    alerts: Sequence[Alert],
    kinds: Mapping[str, str],
    now: datetime,
    noise: NoisePolicy | None = None,
) -> int:
    """One row per (alert, receiver), in the caller's (ingest) transaction. Row by row: a
    throttle or a follow-up can be decided by a row written earlier in the same batch.
    `noise` (consumers/noise) adds routed receivers and decides suppression and grouping."""
    throttled, followup_of, insert = _statements(conn.dialect.name)
    plan = noise.begin(conn, alerts, kinds, now) if noise is not None else None
    if plan is not None:
        kinds = plan.kinds
    created = 0
    for alert in alerts:
        event = alert.event
        alert_json = alert.model_dump(mode="json")
        targets = plan.targets(alert) if plan is not None else [(r, None) for r in alert.receivers]
        for receiver, target in targets:
            key = alert.dedup_key(receiver)
            match = {"p_receiver": receiver, "p_key": key}
            state, reason = "pending", None
            if alert.stale:
                state, reason = "suppressed", "stale"
            elif receiver not in kinds:
                state, reason = "dead", "unknown_receiver"
            elif (
                alert.throttle_s > 0
                and conn.execute(
                    throttled,
                    {
                        **match,
                        "p_rule": alert.rule,
                        "p_throttle_key": alert.throttle_key,
                        "p_since": now - timedelta(seconds=alert.throttle_s),
                    },
                ).scalar()
            ):
                state, reason = "throttled", "throttled"
            decision = Decision()
            if state == "pending" and plan is not None and target is not None:
                decision = plan.decide(alert, receiver, target, key)
                state, reason = decision.state, decision.reason
            followup = bool(
                conn.execute(followup_of, {**match, "p_fingerprint": alert.fingerprint}).scalar()
            )
            result = conn.execute(
                insert,
                {
                    "id": uuid.uuid4().hex,
                    "dedup_key": key,
                    "rule": alert.rule,
                    "severity": alert.severity,
                    "fingerprint": alert.fingerprint,
                    "throttle_key": alert.throttle_key,
                    "receiver": receiver,
                    "receiver_type": kinds.get(receiver, "unknown"),
                    "followup": followup,
                    "state": state,
                    "attempts": 0,
                    "run_id": event.RunId,
                    "status": event.Status,
                    "event_time": event.TimeGenerated,
                    "alert": alert_json,
                    "created_at": now,
                    "next_attempt_at": decision.due or now,
                    "reason": reason,
                    "kind": "alert",
                    "group_key": decision.group_key,
                },
            )
            created += max(result.rowcount, 0)
            if noise is not None and result.rowcount == 1:
                noise.count(state)
    return created


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
                .where(n.c.state == "pending", n.c.next_attempt_at <= now)
                .order_by(n.c.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            ids = list(conn.execute(due).scalars())
            if not ids:
                return []
            from consumers.noise.grouping import claim_members  # noise imports the store

            ids = claim_members(conn, ids, now)
            conn.execute(
                update(n)
                .where(n.c.id.in_(ids), n.c.state == "pending")
                .values(
                    state="sending",
                    claim=token,
                    lease_until=now + timedelta(seconds=lease_s),
                    attempts=n.c.attempts + 1,
                )
            )
            rows = conn.execute(select(n).where(n.c.claim == token, n.c.state == "sending"))
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
            last_error=error[:4000],
        )

    def mark_dead(self, notification_id: str, reason: str, error: str) -> None:
        self._set(
            notification_id,
            state="dead",
            lease_until=None,
            claim=None,
            reason=reason,
            last_error=error[:4000],
        )

    def release_expired(self, now: datetime) -> int:
        """Rows whose dispatcher died mid-send go back to pending (the documented window)."""
        with self._lock, self._engine.begin() as conn:
            result = conn.execute(
                update(n)
                .where(n.c.state == "sending", n.c.lease_until < now)
                .values(state="pending", claim=None, lease_until=None, next_attempt_at=now)
            )
            return max(result.rowcount, 0)

    def retry(self, notification_id: str, now: datetime) -> bool:
        """`runwatch notifications retry ID`: a dead (or waiting) one is due again now."""
        with self._lock, self._engine.begin() as conn:
            result = conn.execute(
                update(n)
                .where(n.c.id == notification_id, n.c.state.in_(("dead", "pending")))
                .values(state="pending", next_attempt_at=now, created_at=now, reason=None)
            )
            return result.rowcount == 1

    def next_due(self) -> datetime | None:
        with self._engine.connect() as conn:
            value = conn.execute(
                select(func.min(n.c.next_attempt_at)).where(n.c.state == "pending")
            ).scalar()
        return None if value is None else to_utc(value)

    def depth(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(n.c.state, func.count()).group_by(n.c.state))
            counts = {state: 0 for state in STATES}
            counts.update({state: int(count) for state, count in rows})
            return counts

    def list(self, *, state: str | None = None, limit: int = 50) -> list[Notification]:
        query = select(n).order_by(n.c.created_at.desc(), n.c.id).limit(limit)
        if state is not None:
            query = query.where(n.c.state == state)
        with self._engine.connect() as conn:
            return [Notification.from_row(row) for row in conn.execute(query)]

    def get(self, notification_id: str) -> Notification | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(n).where(n.c.id == notification_id)).first()
        return None if row is None else Notification.from_row(row)
