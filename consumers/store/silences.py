"""Silences in the store: `runwatch silence add | list | expire` write and read them here,
and every replica's noise control reads the active ones through its state port
(consumers/store/outbox_state.py), so all of them see the same silences."""

from __future__ import annotations

import getpass
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from consumers.model.events import to_utc
from consumers.model.matchers import parse_all
from consumers.model.notifications import NotificationState, silence_reason
from consumers.model.silences import Silence
from consumers.store.schema import notifications as n
from consumers.store.schema import silences as s

if TYPE_CHECKING:
    from consumers.store.engine import Store


def silence_from_row(row: Any, silenced: int = 0) -> Silence:
    return Silence(
        id=row.id,
        matchers=tuple(row.matchers),
        starts_at=to_utc(row.starts_at),
        ends_at=to_utc(row.ends_at),
        created_by=row.created_by,
        comment=row.comment,
        created_at=to_utc(row.created_at),
        silenced=silenced,
    )


def add_silence(
    store: Store,
    matchers: list[str],
    *,
    duration_s: float,
    comment: str,
    now: datetime,
    created_by: str | None = None,
    starts_at: datetime | None = None,
) -> Silence:
    """Raises ValueError for a bad matcher, no matcher, or a non-positive duration."""
    if not matchers:
        raise ValueError("a silence needs at least one --match")
    parse_all(matchers)
    if duration_s <= 0:
        raise ValueError("the duration must be positive")
    start = to_utc(starts_at) if starts_at is not None else now
    silence = Silence(
        id=uuid.uuid4().hex[:16],
        matchers=tuple(matchers),
        starts_at=start,
        ends_at=start + timedelta(seconds=duration_s),
        created_by=created_by or getpass.getuser(),
        comment=comment,
        created_at=now,
    )
    values = {
        "id": silence.id,
        "matchers": list(matchers),
        "starts_at": silence.starts_at,
        "ends_at": silence.ends_at,
        "created_by": silence.created_by,
        "comment": comment,
        "created_at": now,
    }
    with store.write_lock, store.engine.begin() as conn:
        conn.execute(s.insert().values(**values))
    return silence


def list_silences(store: Store, now: datetime, *, include_expired: bool = False) -> list[Silence]:
    """Newest first, each with how many notifications it silenced."""
    counts = (
        select(n.c.reason, func.count().label("count"))
        .where(n.c.state == NotificationState.SILENCED.value)
        .group_by(n.c.reason)
    )
    query = select(s).order_by(s.c.created_at.desc())
    if not include_expired:
        query = query.where(s.c.ends_at > now)
    with store.engine.connect() as conn:
        silenced = {reason: int(count) for reason, count in conn.execute(counts)}
        return [
            silence_from_row(row, silenced.get(silence_reason(row.id), 0))
            for row in conn.execute(query)
        ]


def expire_silence(store: Store, silence_id: str, now: datetime) -> bool:
    """False when there is no such silence or it has already ended."""
    with store.write_lock, store.engine.begin() as conn:
        result = conn.execute(
            update(s).where(s.c.id == silence_id, s.c.ends_at > now).values(ends_at=now)
        )
        return result.rowcount == 1
