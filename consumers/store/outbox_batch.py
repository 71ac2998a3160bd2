"""The recorder's state for one ingest batch: its notification rows are written set-based,
in the batch's transaction, when the recorder is done (`flush`), instead of one INSERT and
two look-ups per row.

Why: row by row, each notification cost three statements (the throttle and follow-up
look-ups, the insert), each a round trip with SQLAlchemy's per-statement work under the
replica's GIL (benchmarks/store_write.py --notify). Here the recorder first names the batch's
candidates (`prepare`): one look-up per table of what they depend on (their dedup keys
already stored, the sent-or-to-be-sent rows of their fingerprints, the rows of their throttle
keys within the widest throttle window); then every throttle and follow-up decision is
answered from that and from the rows decided earlier in the batch, in memory, in the same
order and with the same answers as the row-by-row path (tests/test_outbox_batches.py holds
them to it). `flush` writes the new rows in dedup-key order, as staging.py and writer.py do
for events: on PostgreSQL COPY into a temporary table and one INSERT ... SELECT ... ON
CONFLICT DO NOTHING (two replicas writing the same rows take the unique index's locks in the
same order: no deadlock, and the second waits for the first and inserts nothing); on SQLite
multi-row INSERT ... VALUES (consumers/store/writer.py's chunks).

Exactly once: the rows are written in the transaction of the batch's events, so they commit
or vanish with them, and a replay finds their dedup keys stored and inserts nothing. What is
not in memory (noise control's reads: is_recorded, notified_in_group, live_count, groups,
silences, inhibitions) still asks the database, plus the rows held here.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, bindparam, select

from consumers.model.events import to_utc
from consumers.model.notifications import (
    LIVE,
    NOT_SENT,
    NotificationKind,
    NotificationRow,
    NotificationState,
)
from consumers.store.dialects import dialect_module
from consumers.store.outbox_state import SqlOutboxState
from consumers.store.schema import notifications as n
from consumers.store.staging import Stage
from consumers.store.writer import insert_rows

# What the recorder writes: every column but the dispatcher's (lease, claim, sent_at, error).
_COLUMNS = tuple(
    c.name for c in n.columns if c.name not in ("lease_until", "claim", "sent_at", "last_error")
)
_STAGE = Stage(n, _COLUMNS)
_NOT_SENT = [state.value for state in NOT_SENT]
_LIVE = frozenset(state.value for state in LIVE)
_ALERT = NotificationKind.ALERT.value
# Values per look-up statement: far under SQLite's 32,766 and PostgreSQL's 65,535 binds.
_CHUNK = 2_000


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    it = iter(sorted(set(values)))
    while chunk := list(islice(it, _CHUNK)):
        yield chunk


@functools.cache
def _lookups() -> tuple[Any, Any, Any]:
    """(stored dedup keys, follow-up candidates, throttle candidates), each for a list."""
    many = functools.partial(bindparam, expanding=True)
    stored = select(n.c.dedup_key).where(n.c.dedup_key.in_(many("p_keys")))
    followups = select(n.c.fingerprint, n.c.receiver, n.c.dedup_key).where(
        n.c.fingerprint.in_(many("p_fingerprints")), n.c.state.not_in(_NOT_SENT)
    )
    # rule and key both: ix_notifications_throttle leads with them
    throttles = select(
        n.c.rule, n.c.throttle_key, n.c.receiver, n.c.dedup_key, n.c.created_at
    ).where(
        n.c.rule.in_(many("p_rules")),
        n.c.throttle_key.in_(many("p_throttle_keys")),
        n.c.created_at >= bindparam("p_since", type_=n.c.created_at.type),
        n.c.state.not_in(_NOT_SENT),
    )
    return stored, followups, throttles


@functools.cache
def _from_stage() -> Any:
    """Dedup-key order: replicas recording the same rows lock them in the same order."""
    stage = _STAGE.drained()
    query = select(*(stage.c[name] for name in _COLUMNS)).order_by(stage.c.dedup_key)
    return (
        dialect_module("postgresql")
        .insert(n)
        .from_select(_COLUMNS, query)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .execution_options(preserve_rowcount=True)
    )


def _sqlite_insert(conn: Connection, rows: int) -> Any:
    placeholder = {name: None for name in _COLUMNS}
    return (
        dialect_module("sqlite")
        .insert(n)
        .values([placeholder] * rows)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
    )


def write_notifications(conn: Connection, rows: Sequence[NotificationRow]) -> int:
    """Insert `rows` unless their dedup key is stored, in dedup-key order; how many were new."""
    if not rows:
        return 0
    ordered = sorted(rows, key=lambda row: row["dedup_key"])
    if conn.dialect.name == "postgresql":
        _STAGE.copy(conn, ordered)
        return max(conn.execute(_from_stage()).rowcount, 0)
    return insert_rows(conn, "notifications", _sqlite_insert, n, ordered)


class BatchOutboxState(SqlOutboxState):
    """SqlOutboxState whose rows wait for `flush`; the recorder's look-ups are answered from
    what `prepare` loaded and the rows held. Keys not prepared (a storm summary's) are
    looked up one by one, as before."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._rows: dict[str, NotificationRow] = {}  # held, by dedup key, in decision order
        self._asked: set[str] = set()  # dedup keys prepare looked up ...
        self._stored: set[str] = set()  # ... and those of them already stored
        self._fingerprints: set[str] = set()
        self._throttled: set[tuple[str, str]] = set()  # (rule, throttle key) prepared
        self._since: datetime | None = None
        # Sent-or-to-be-sent rows (state not in NOT_SENT), stored or held, by what the
        # look-ups match on: (fingerprint, receiver) -> dedup keys; (rule, throttle key,
        # receiver) -> (created_at, dedup key).
        self._followups: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self._throttles: defaultdict[tuple[str, str, str], list[tuple[datetime, str]]] = (
            defaultdict(list)
        )
        # Held rows storm control counts, by receiver, and those repeat_interval looks for,
        # by (group key, fingerprint): their created_at.
        self._live: defaultdict[str, list[datetime]] = defaultdict(list)
        self._grouped: defaultdict[tuple[str, str], list[datetime]] = defaultdict(list)

    def prepare(
        self,
        keys: Collection[str],
        fingerprints: Collection[str],
        throttles: Collection[tuple[str, str]],
        since: datetime | None,
    ) -> None:
        """Load what the decisions about these candidates read: whether their dedup keys are
        stored, the rows their fingerprints thread under, the rows of their (rule, throttle
        key) created at or after `since` (the widest throttle window)."""
        stored, followups, throttled = _lookups()
        conn = self._conn
        for chunk in _chunks(keys):
            self._stored.update(conn.execute(stored, {"p_keys": chunk}).scalars())
        self._asked.update(keys)
        for chunk in _chunks(fingerprints):
            for row in conn.execute(followups, {"p_fingerprints": chunk}):
                self._followups[(row.fingerprint, row.receiver)].add(row.dedup_key)
        self._fingerprints.update(fingerprints)
        if since is not None and throttles:
            rules = sorted({rule for rule, _ in throttles})
            for chunk in _chunks(key for _, key in throttles):
                params = {"p_rules": rules, "p_throttle_keys": chunk, "p_since": since}
                for row in conn.execute(throttled, params):
                    entry = (to_utc(row.created_at), row.dedup_key)
                    self._throttles[(row.rule, row.throttle_key, row.receiver)].append(entry)
            self._throttled.update(throttles)
            self._since = since

    def flush(self) -> int:
        """Write the rows held; how many alert rows were new, as the recorder counts (another
        replica may have written some since `prepare`: ON CONFLICT leaves them, uncounted).
        Storm summaries, rare, go in a statement of their own after the alerts' rows."""
        rows, self._rows = list(self._rows.values()), {}
        alerts = [row for row in rows if row["kind"] == _ALERT]
        summaries = [row for row in rows if row["kind"] != _ALERT]
        self._followups.clear()
        self._throttles.clear()
        self._live.clear()
        self._grouped.clear()
        self._asked.clear()
        self._stored.clear()
        self._fingerprints.clear()
        self._throttled.clear()
        self._since = None
        created = write_notifications(self._conn, alerts)
        write_notifications(self._conn, summaries)
        return created

    # -- the recorder ----------------------------------------------------------------------

    def is_throttled(
        self, rule: str, throttle_key: str, receiver: str, dedup_key: str, since: datetime
    ) -> bool:
        entries = self._throttles.get((rule, throttle_key, receiver), ())
        if any(key != dedup_key and at >= since for at, key in entries):
            return True
        prepared = self._since is not None and since >= self._since
        if prepared and (rule, throttle_key) in self._throttled:
            return False
        return super().is_throttled(rule, throttle_key, receiver, dedup_key, since)

    def is_followup(self, fingerprint: str, receiver: str, dedup_key: str) -> bool:
        keys = self._followups.get((fingerprint, receiver), ())
        if any(key != dedup_key for key in keys):
            return True
        if fingerprint in self._fingerprints:
            return False
        return super().is_followup(fingerprint, receiver, dedup_key)

    def insert(self, row: NotificationRow) -> bool:
        """Held for `flush`; True when its dedup key is neither stored nor held yet."""
        key = row["dedup_key"]
        if self.is_recorded(key):
            return False
        self._rows[key] = row
        if row["state"] not in NOT_SENT:
            self._followups[(row["fingerprint"], row["receiver"])].add(key)
            at = to_utc(row["created_at"])
            self._throttles[(row["rule"], row["throttle_key"], row["receiver"])].append((at, key))
        if row["state"] in _LIVE:
            at = to_utc(row["created_at"])
            if row["group_key"] is not None:
                self._grouped[(row["group_key"], row["fingerprint"])].append(at)
            elif row["kind"] == _ALERT:
                self._live[row["receiver"]].append(at)
        return True

    def hold(self, notification_id: str, state: NotificationState, reason: str | None) -> bool:
        self.flush()
        return super().hold(notification_id, state, reason)

    # -- noise control: the database, and the rows held --------------------------------------

    def is_recorded(self, dedup_key: str) -> bool:
        if dedup_key in self._rows:
            return True
        if dedup_key in self._asked:
            return dedup_key in self._stored
        return super().is_recorded(dedup_key)

    def notified_in_group(self, group_key: str, fingerprint: str, since: datetime) -> bool:
        held = self._grouped.get((group_key, fingerprint), ())
        return any(at >= since for at in held) or super().notified_in_group(
            group_key, fingerprint, since
        )

    def live_count(self, receiver: str, since: datetime, limit: int) -> int:
        held = sum(1 for at in self._live.get(receiver, ()) if at >= since)
        if held >= limit:
            return limit
        return held + super().live_count(receiver, since, limit - held)
