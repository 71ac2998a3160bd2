"""Grouping: alerts for one receiver whose `group_by` labels have the same values are sent
together, as one digest. The timing follows Alertmanager's:

- group_wait: a new group waits this long after its first alert before its first digest,
  so that alerts arriving together (a pipeline failing step after step) go out as one.
- group_interval: after a digest, alerts that join the group wait until at least this long
  after that digest; the next digest lists only them.
- repeat_interval: an alert (same rule and throttle key, i.e. fingerprint) already notified in
  the group within this long is recorded as `repeat` and not listed again. A group quiet for
  longer than repeat_interval starts afresh (waits group_wait again).

Alertmanager also re-sends a group's still-firing alerts every repeat_interval; runwatch's
per-event alerts have no "still firing" state, so nothing is re-sent by itself.

A group's rows share a `group_key` and its flush time as `next_attempt_at`; the dispatcher
claims them together (`claim_members`) and sends one digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import orjson
from sqlalchemy import Connection, and_, exists, select, update

from consumers.events import to_utc
from consumers.noise.routing import Target
from consumers.noise.tables import notification_groups as g
from consumers.store.schema import notifications as n

LIVE = ("pending", "sending", "sent")


def group_labels(target: Target, labels: dict[str, str]) -> dict[str, str] | None:
    """None when the target does not group (no group_by, or `...`: every label)."""
    if not target.group_by or "..." in target.group_by:
        return None
    return {name: labels.get(name, "") for name in target.group_by}


def group_key(target: Target, receiver: str, values: dict[str, str]) -> str:
    text = orjson.dumps([target.route, receiver, values], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=12).hexdigest()


def is_repeat(conn: Connection, key: str, fingerprint: str, repeat_s: float, now: datetime) -> bool:
    return bool(
        conn.execute(
            select(
                exists().where(
                    n.c.group_key == key,
                    n.c.fingerprint == fingerprint,
                    n.c.state.in_(LIVE),
                    n.c.created_at >= now - timedelta(seconds=repeat_s),
                )
            )
        ).scalar()
    )


def schedule(
    conn: Connection,
    key: str,
    receiver: str,
    target: Target,
    values: dict[str, str],
    now: datetime,
) -> datetime:
    """When the group's next digest goes out; creates the group or schedules its flush."""
    row = conn.execute(select(g).where(g.c.key == key)).first()
    if row is None:
        flush = now + timedelta(seconds=target.group_wait)
        conn.execute(
            g.insert().values(
                key=key,
                receiver=receiver,
                route=target.route,
                labels=values,
                next_flush_at=flush,
                last_flush_at=None,
            )
        )
        return flush
    if row.next_flush_at is not None:
        return to_utc(row.next_flush_at)
    last = None if row.last_flush_at is None else to_utc(row.last_flush_at)
    if last is None or now - last >= timedelta(seconds=target.repeat_interval):
        flush = now + timedelta(seconds=target.group_wait)
    else:
        flush = max(now, last + timedelta(seconds=target.group_interval))
    conn.execute(update(g).where(g.c.key == key).values(next_flush_at=flush))
    return flush


def claim_members(conn: Connection, ids: Sequence[str], now: datetime) -> list[str]:
    """The claimed rows plus the other due pending rows of their groups (a claim limit must
    not split a digest); marks those groups flushed now."""
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
            and_(n.c.group_key.in_(keys), n.c.state == "pending", n.c.next_attempt_at <= now)
        )
    ).scalars()
    conn.execute(update(g).where(g.c.key.in_(keys)).values(next_flush_at=None, last_flush_at=now))
    return list(dict.fromkeys([*ids, *more]))
