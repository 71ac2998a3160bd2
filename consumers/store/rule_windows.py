"""Reading and writing the scheduled rules' window snapshot (tables rule_windows, rule_feed).

The evaluation lease's holder writes, in a tick's transaction (with the notifications and
alert states that tick raised), window states of rules and where the feed stands: the
position (last id read, ids missing below it) at which every row not listed as behind is
current, and the earlier position of each row that is behind. A warm-up reads them back and
counts, per rule, only what came after its row's position. What a state means is the rules'
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

from consumers.store.dialects import dialect_module
from consumers.store.feed import Position
from consumers.store.schema import rule_feed, rule_windows

if TYPE_CHECKING:
    from consumers.store.engine import Store

log = logging.getLogger(__name__)

FEED = "rule-evaluation"  # the lease whose holder writes them


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the last holder left; `at` None when there is nothing usable."""

    at: Position | None = None
    behind: Mapping[str, Position] = field(default_factory=dict)  # rows current at these
    rules: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # rule -> (fp, state)


def _position(data: Any) -> Position:
    cursor, gaps = data
    return Position(int(cursor), {int(k): float(v) for k, v in gaps.items()})


def load_snapshot(store: Store, name: str = FEED) -> Snapshot:
    """The snapshot, or an empty one when its feed row is missing or damaged (logged): rule
    rows without it cannot say which events they have counted."""
    with store.engine.connect() as conn:
        feed = conn.execute(select(rule_feed).where(rule_feed.c.name == name)).first()
        if feed is None:
            return Snapshot()
        rows = {r.rule: (r.fingerprint, r.state) for r in conn.execute(select(rule_windows))}
    try:
        positions = orjson.loads(feed.positions)
        at = _position([feed.cursor, positions["gaps"]])
        behind = {str(rule): _position(p) for rule, p in positions["behind"].items()}
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("rule window snapshot: feed row unreadable (%s); replaying every rule", exc)
        return Snapshot()
    return Snapshot(at, behind, rows)


def _data(position: Position) -> dict[str, float]:
    return {str(k): v for k, v in position.gaps.items()}


def save_snapshot(
    conn: Connection,
    *,
    at: Position,
    behind: Mapping[str, Position],
    rules: Mapping[str, tuple[str, str]],
    now: datetime,
    keep: Iterable[str] | None = None,
    name: str = FEED,
) -> None:
    """Upsert these rules' rows and the feed row; with `keep`, delete the rows of every
    other rule (removed or renamed rules)."""
    module = dialect_module(conn.dialect.name)
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
    positions = {
        "gaps": _data(at),
        "behind": {rule: [p.cursor, _data(p)] for rule, p in behind.items()},
    }
    insert = module.insert(rule_feed)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["name"],
            set_={c: insert.excluded[c] for c in ("cursor", "positions", "updated_at")},
        ),
        {
            "name": name,
            "cursor": at.cursor,
            "positions": orjson.dumps(positions).decode(),
            "updated_at": now,
        },
    )
