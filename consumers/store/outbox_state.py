"""The state ports of noise control (consumers/noise/state.py) and of the recorder
(consumers/outbox/state.py), in SQL, on the caller's connection: the ingest transaction,
the scheduler's cycle, the dispatcher's re-check. Inside one transaction a decision sees the
rows written before it (a throttle, a follow-up, a storm count within the same batch).

Every statement is built once per dialect and fed parameters: building a SQLAlchemy
statement per row cost more than running it (measured: a fifth of a burst's CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Integer, and_, bindparam, exists, func, select, update

from consumers.model.events import to_utc
from consumers.model.notifications import (
    LIVE,
    NOT_SENT,
    NotificationGroup,
    NotificationKind,
    NotificationRow,
    NotificationState,
)
from consumers.model.silences import Silence
from consumers.store.dialects import dialect_module
from consumers.store.schema import inhibitions, notification_groups, notifications, silences
from consumers.store.silences import silence_from_row

if TYPE_CHECKING:
    from consumers.store.engine import Store

n, g, t, s = notifications, notification_groups, inhibitions, silences


def _time(name: str) -> Any:
    return bindparam(name, type_=n.c.created_at.type)


@dataclass(frozen=True, slots=True)
class _Statements:
    throttled: Any
    followup: Any
    insert: Any
    recorded: Any
    notified_in_group: Any
    live_count: Any
    silences: Any
    inhibition: Any
    record_inhibition: Any
    group: Any
    schedule_group: Any
    hold: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    module: Any = dialect_module(dialect)
    others = and_(n.c.receiver == bindparam("p_receiver"), n.c.dedup_key != bindparam("p_key"))
    live = (
        select(n.c.id)
        .where(
            n.c.kind == NotificationKind.ALERT.value,
            n.c.receiver == bindparam("p_receiver"),
            n.c.created_at >= _time("p_since"),
            n.c.group_key.is_(None),
            n.c.state.in_([state.value for state in LIVE]),
        )
        .limit(bindparam("p_limit", type_=Integer))
        .subquery()
    )
    upsert_inhibition = module.insert(t).values(
        name=bindparam("p_name"),
        equal_key=bindparam("p_key"),
        fingerprint=bindparam("p_fingerprint"),
        until=_time("p_until"),
    )
    upsert_group = module.insert(g)
    return _Statements(
        throttled=select(
            exists().where(
                others,
                n.c.rule == bindparam("p_rule"),
                n.c.throttle_key == bindparam("p_throttle_key"),
                n.c.state.not_in([state.value for state in NOT_SENT]),
                n.c.created_at >= _time("p_since"),
            )
        ),
        followup=select(
            exists().where(
                others,
                n.c.fingerprint == bindparam("p_fingerprint"),
                n.c.state.not_in([state.value for state in NOT_SENT]),
            )
        ),
        # SQLAlchemy 2.1 reports -1 for a Core INSERT on psycopg unless asked
        insert=module.insert(n)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .execution_options(preserve_rowcount=True),
        recorded=select(exists().where(n.c.dedup_key == bindparam("p_key"))),
        notified_in_group=select(
            exists().where(
                n.c.group_key == bindparam("p_group"),
                n.c.fingerprint == bindparam("p_fingerprint"),
                n.c.state.in_([state.value for state in LIVE]),
                n.c.created_at >= _time("p_since"),
            )
        ),
        live_count=select(func.count()).select_from(live),
        silences=select(s).where(s.c.starts_at <= _time("p_now"), s.c.ends_at > _time("p_now")),
        inhibition=select(t.c.fingerprint).where(
            t.c.name == bindparam("p_name"),
            t.c.equal_key == bindparam("p_key"),
            t.c.until > _time("p_now"),
        ),
        record_inhibition=upsert_inhibition.on_conflict_do_update(
            index_elements=["name", "equal_key"],
            set_={
                "fingerprint": upsert_inhibition.excluded.fingerprint,
                "until": upsert_inhibition.excluded.until,
            },
        ),
        group=select(g).where(g.c.key == bindparam("p_key")),
        schedule_group=upsert_group.on_conflict_do_update(
            index_elements=["key"],
            set_={"next_flush_at": upsert_group.excluded.next_flush_at},
        ),
        hold=update(n)
        .where(n.c.id == bindparam("p_id"), n.c.state == NotificationState.SENDING.value)
        .values(
            state=bindparam("p_state"), reason=bindparam("p_reason"), claim=None, lease_until=None
        ),
    )


class SqlOutboxState:
    """Implements consumers.outbox.state.OutboxState (and so noise's NoiseState)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._sql = _statements(conn.dialect.name)

    def _exists(self, statement: Any, params: dict[str, Any]) -> bool:
        return bool(self._conn.execute(statement, params).scalar())

    # -- noise control ---------------------------------------------------------------------

    def active_silences(self, now: datetime) -> Sequence[Silence]:
        rows = self._conn.execute(self._sql.silences, {"p_now": now})
        return [silence_from_row(row) for row in rows]

    def record_inhibition(
        self, rule: str, equal_key: str, fingerprint: str, until: datetime
    ) -> None:
        self._conn.execute(
            self._sql.record_inhibition,
            {"p_name": rule, "p_key": equal_key, "p_fingerprint": fingerprint, "p_until": until},
        )

    def inhibition_source(self, rule: str, equal_key: str, now: datetime) -> str | None:
        params = {"p_name": rule, "p_key": equal_key, "p_now": now}
        value = self._conn.execute(self._sql.inhibition, params).scalar()
        return None if value is None else str(value)

    def is_recorded(self, dedup_key: str) -> bool:
        return self._exists(self._sql.recorded, {"p_key": dedup_key})

    def notified_in_group(self, group_key: str, fingerprint: str, since: datetime) -> bool:
        params = {"p_group": group_key, "p_fingerprint": fingerprint, "p_since": since}
        return self._exists(self._sql.notified_in_group, params)

    def group(self, key: str) -> NotificationGroup | None:
        row = self._conn.execute(self._sql.group, {"p_key": key}).first()
        if row is None:
            return None
        return NotificationGroup(
            key=row.key,
            receiver=row.receiver,
            route=row.route,
            labels=dict(row.labels),
            next_flush_at=None if row.next_flush_at is None else to_utc(row.next_flush_at),
            last_flush_at=None if row.last_flush_at is None else to_utc(row.last_flush_at),
        )

    def schedule_group(self, group: NotificationGroup) -> None:
        self._conn.execute(
            self._sql.schedule_group,
            {
                "key": group.key,
                "receiver": group.receiver,
                "route": group.route,
                "labels": group.labels,
                "next_flush_at": group.next_flush_at,
                "last_flush_at": group.last_flush_at,
            },
        )

    def live_count(self, receiver: str, since: datetime, limit: int) -> int:
        params = {"p_receiver": receiver, "p_since": since, "p_limit": limit}
        return int(self._conn.execute(self._sql.live_count, params).scalar() or 0)

    # -- the recorder ----------------------------------------------------------------------

    def prepare(
        self,
        keys: Collection[str],
        fingerprints: Collection[str],
        throttles: Collection[tuple[str, str]],
        since: datetime | None,
    ) -> None:
        """Nothing to load: each look-up asks the database (consumers/store/outbox_batch.py
        is the batch's variant)."""

    def is_throttled(
        self, rule: str, throttle_key: str, receiver: str, dedup_key: str, since: datetime
    ) -> bool:
        params = {
            "p_receiver": receiver,
            "p_key": dedup_key,
            "p_rule": rule,
            "p_throttle_key": throttle_key,
            "p_since": since,
        }
        return self._exists(self._sql.throttled, params)

    def is_followup(self, fingerprint: str, receiver: str, dedup_key: str) -> bool:
        params = {"p_receiver": receiver, "p_key": dedup_key, "p_fingerprint": fingerprint}
        return self._exists(self._sql.followup, params)

    def insert(self, row: NotificationRow) -> bool:
        return self._conn.execute(self._sql.insert, row).rowcount == 1

    def hold(self, notification_id: str, state: NotificationState, reason: str | None) -> bool:
        params = {"p_id": notification_id, "p_state": state.value, "p_reason": reason}
        return self._conn.execute(self._sql.hold, params).rowcount == 1


@contextmanager
def open_state(store: Store) -> Iterator[SqlOutboxState]:
    """The state in a transaction of its own (the dispatcher's re-check)."""
    with store.write_lock, store.engine.begin() as conn:
        yield SqlOutboxState(conn)
