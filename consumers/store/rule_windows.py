"""Reading and writing the scheduled rules' window snapshot (tables rule_windows, rule_feed).

The evaluation lease's holder writes, in each tick's transaction (with the notifications and
alert states that tick raised), the state of every rule whose window changed and where the
feed stands: the rows and the cursor always describe the same events. A warm-up reads them
back and replays only the rules without a usable row. What the state means is the rules'
business (consumers.rules.windows); here it is text with a fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from consumers.store.schema import rule_feed, rule_windows

if TYPE_CHECKING:
    from consumers.store.engine import Store

log = logging.getLogger(__name__)

FEED = "rule-evaluation"  # the lease whose holder writes them


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the last holder left: None for `cursor` when there is nothing usable."""

    cursor: int | None = None
    gaps: Mapping[int, float] = field(default_factory=dict)  # id -> epoch first missed
    rules: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # rule -> (fp, state)


def load_snapshot(store: Store, name: str = FEED) -> Snapshot:
    """The snapshot, or an empty one when its cursor row is missing or damaged (logged):
    rule rows without a cursor cannot say which events they have counted."""
    with store.engine.connect() as conn:
        feed = conn.execute(select(rule_feed).where(rule_feed.c.name == name)).first()
        if feed is None:
            return Snapshot()
        rows = {r.rule: (r.fingerprint, r.state) for r in conn.execute(select(rule_windows))}
    try:
        gaps = {int(k): float(v) for k, v in orjson.loads(feed.gaps).items()}
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        log.warning("rule window snapshot: feed row unreadable (%s); replaying every rule", exc)
        return Snapshot()
    return Snapshot(int(feed.cursor), gaps, rows)


def save_snapshot(
    conn: Connection,
    *,
    cursor: int | None,
    gaps: Mapping[int, float],
    rules: Mapping[str, tuple[str, str]],
    now: datetime,
    keep: Iterable[str] | None = None,
    name: str = FEED,
) -> None:
    """Upsert the changed rules' rows and (if given) the cursor; with `keep`, delete the
    rows of every other rule (removed or renamed rules)."""
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    if keep is not None:
        conn.execute(delete(rule_windows).where(rule_windows.c.rule.not_in(list(keep))))
    if rules:
        insert = module.insert(rule_windows)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["rule"],
                set_={c: insert.excluded[c] for c in ("fingerprint", "state", "updated_at")},
            ),
            [
                {"rule": rule, "fingerprint": fp, "state": state, "updated_at": now}
                for rule, (fp, state) in rules.items()
            ],
        )
    if cursor is not None:
        insert = module.insert(rule_feed)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["name"],
                set_={c: insert.excluded[c] for c in ("cursor", "gaps", "updated_at")},
            ),
            {
                "name": name,
                "cursor": cursor,
                "gaps": orjson.dumps({str(k): v for k, v in gaps.items()}).decode(),
                "updated_at": now,
            },
        )
