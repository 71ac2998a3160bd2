"""Storm control: when one receiver would get more than `storm.max_per_minute` notifications
in one UTC minute, the excess is recorded as `storm` (not sent) and one summary notification
(kind `storm`) goes out at the end of that minute, listing how many and which. Grouped
alerts neither count nor are held back: a group already sends at most one digest per
group_interval.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from consumers.noise.grouping import LIVE
from consumers.store.schema import notifications as n

STORM_RULE = "storm-control"


def window(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(second=0, microsecond=0)
    return start, start + timedelta(minutes=1)


def over_limit(conn: Connection, receiver: str, limit: int, now: datetime) -> bool:
    """Counts at most `limit` rows: in a storm the minute's first rows are the live ones,
    so the scan stops there instead of reading every stormed row (quadratic in a storm)."""
    start, _ = window(now)
    live = (
        select(n.c.id)
        .where(
            n.c.kind == "alert",
            n.c.receiver == receiver,
            n.c.created_at >= start,
            n.c.group_key.is_(None),
            n.c.state.in_(LIVE),
        )
        .limit(limit)
        .subquery()
    )
    count = conn.execute(select(func.count()).select_from(live)).scalar()
    return int(count or 0) >= limit


def ensure_summary(conn: Connection, receiver: str, kind: str, now: datetime) -> None:
    """One summary row per receiver and minute, due when the minute ends."""
    start, end = window(now)
    dedup = f"storm|{receiver}|{start.isoformat()}"
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        module.insert(n)
        .values(
            id=uuid.uuid4().hex,
            dedup_key=dedup,
            rule=STORM_RULE,
            severity=2,
            fingerprint=hashlib.blake2b(f"storm|{receiver}".encode(), digest_size=12).hexdigest(),
            throttle_key="",
            receiver=receiver,
            receiver_type=kind,
            followup=False,
            state="pending",
            attempts=0,
            run_id="",
            status="",
            event_time=start,
            alert={"window_start": start.isoformat(), "window_end": end.isoformat()},
            created_at=now,
            next_attempt_at=end,
            kind="storm",
        )
        .on_conflict_do_nothing(index_elements=["dedup_key"])
    )
