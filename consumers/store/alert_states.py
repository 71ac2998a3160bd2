"""Reading and writing the scheduled rules' alert instance states (table alert_states).

Written in the same transaction as the notifications they raise: a crash leaves both or
neither, so a firing is never recorded without its notification, nor sent twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, select, tuple_

from consumers.model.events import to_utc
from consumers.model.instances import InstanceState
from consumers.store.dialects import dialect_module
from consumers.store.schema import alert_states as t

if TYPE_CHECKING:
    from consumers.store.engine import Store

_CHUNK = 500  # keys per DELETE ... IN


def load_states(store: Store) -> dict[tuple[str, str], InstanceState]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(t))
        return {
            (row.rule, row.group_key): InstanceState(
                history=row.history,
                firing=bool(row.firing),
                clear=row.clear,
                instance=row.instance,
                since=None if row.since is None else to_utc(row.since),
                alert=row.alert,
            )
            for row in rows
        }


def save_states(
    conn: Connection,
    changed: Mapping[tuple[str, str], InstanceState | None],
    now: datetime,
) -> None:
    """Upsert the changed states; None (or nothing worth keeping) deletes the row."""
    module: Any = dialect_module(conn.dialect.name)
    gone = [key for key, state in changed.items() if state is None or not state.worth_keeping]
    key = tuple_(t.c.rule, t.c.group_key)
    for start in range(0, len(gone), _CHUNK):  # one statement, not one per state
        conn.execute(delete(t).where(key.in_(gone[start : start + _CHUNK])))
    rows = [
        {
            "rule": rule,
            "group_key": group_key,
            "firing": state.firing,
            "history": state.history,
            "clear": state.clear,
            "instance": state.instance,
            "since": state.since,
            "alert": state.alert,
            "updated_at": now,
        }
        for (rule, group_key), state in changed.items()
        if state is not None and state.worth_keeping
    ]
    if not rows:
        return
    insert = module.insert(t)
    upsert = insert.on_conflict_do_update(
        index_elements=["rule", "group_key"],
        set_={
            c: insert.excluded[c]
            for c in ("firing", "history", "clear", "instance", "since", "alert", "updated_at")
        },
    )
    conn.execute(upsert, rows)


def delete_rules_except(conn: Connection, rules: Iterable[str]) -> None:
    """States of rules that no longer exist (removed or renamed) are forgotten."""
    conn.execute(delete(t).where(t.c.rule.not_in(list(rules))))
