"""Silences: alerts whose labels match every matcher of an active silence are recorded
(state `silenced`, reason `silence:<id>`) and counted, but not sent.

A silence is active from `starts_at` until `ends_at`; `expire` ends it now. Silences are rows
in the store, so every replica and the CLI see the same ones.
"""

from __future__ import annotations

import getpass
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select, update

from consumers.events import to_utc
from consumers.noise.matchers import Matcher, match_all, parse_all
from consumers.noise.tables import silences as s
from consumers.store.schema import notifications as n

if TYPE_CHECKING:
    from consumers.store.engine import Store


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    silenced: int = 0  # notifications it kept from being sent

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at


def _silence(row: Any, silenced: int = 0) -> Silence:
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
    values = {
        "id": uuid.uuid4().hex[:16],
        "matchers": list(matchers),
        "starts_at": start,
        "ends_at": start + timedelta(seconds=duration_s),
        "created_by": created_by or getpass.getuser(),
        "comment": comment,
        "created_at": now,
    }
    with store.write_lock, store.engine.begin() as conn:
        conn.execute(s.insert().values(**values))
    return Silence(
        id=str(values["id"]),
        matchers=tuple(matchers),
        starts_at=start,
        ends_at=start + timedelta(seconds=duration_s),
        created_by=str(values["created_by"]),
        comment=comment,
        created_at=now,
    )


def list_silences(store: Store, now: datetime, *, include_expired: bool = False) -> list[Silence]:
    """Newest first, each with how many notifications it silenced."""
    counts = (
        select(n.c.reason, func.count().label("count"))
        .where(n.c.state == "silenced")
        .group_by(n.c.reason)
    )
    query = select(s).order_by(s.c.created_at.desc())
    if not include_expired:
        query = query.where(s.c.ends_at > now)
    with store.engine.connect() as conn:
        silenced = {reason: int(count) for reason, count in conn.execute(counts)}
        return [_silence(row, silenced.get(f"silence:{row.id}", 0)) for row in conn.execute(query)]


def expire_silence(store: Store, silence_id: str, now: datetime) -> bool:
    """False when there is no such silence or it has already ended."""
    with store.write_lock, store.engine.begin() as conn:
        result = conn.execute(
            update(s).where(s.c.id == silence_id, s.c.ends_at > now).values(ends_at=now)
        )
        return result.rowcount == 1


def active_silences(conn: Connection, now: datetime) -> list[tuple[str, tuple[Matcher, ...]]]:
    rows = conn.execute(select(s.c.id, s.c.matchers).where(s.c.starts_at <= now, s.c.ends_at > now))
    out = []
    for silence_id, matchers in rows:
        try:
            out.append((silence_id, parse_all(matchers)))
        except ValueError:  # written by hand into the table; cannot match anything
            continue
    return out


def silenced_by(
    silences: list[tuple[str, tuple[Matcher, ...]]], labels: dict[str, str]
) -> str | None:
    for silence_id, matchers in silences:
        if match_all(matchers, labels):
            return silence_id
    return None
