"""A named lease with expiry in the store: work that must happen on one replica at a time
(scheduled rule evaluation) runs where the lease is held, and moves to another replica when
its holder stops renewing (crashed, partitioned, shut down).

One statement decides: an upsert whose update only applies when the row is free, expired or
already ours, returning a row only when it applied. PostgreSQL's ON CONFLICT takes the row
lock and re-checks the condition, SQLite serialises writers, so two replicas racing for an
expired lease cannot both win.

Expiry is judged by the clock of the replica asking, so replica clocks must agree to well
within the TTL (NTP does); renew at a fraction of the TTL (a third is usual).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Engine, Table, case, delete, select
from sqlalchemy.exc import OperationalError

from consumers.model.errors import StoreError
from consumers.store.dialects import dialect_module
from consumers.store.schema import leases


def lease_upsert(dialect: str, table: Table, keys: list[Column[Any]]) -> Any:
    """INSERT ... ON CONFLICT that takes the row (holder, expires_at, acquired_at,
    generation) when it is free, expired or already the proposer's, and changes nothing
    otherwise: add RETURNING to learn whether it applied. A renewal keeps when, and in which
    generation, the lease was taken; a takeover increments the generation (a fencing token).
    Shared by the named leases here and the partition leases (partition_leases.py)."""
    c = table.c
    proposed = dialect_module(dialect).insert(table)
    new = proposed.excluded
    ours = c.holder == new.holder
    return proposed.on_conflict_do_update(
        index_elements=keys,
        set_={
            "holder": new.holder,
            "expires_at": new.expires_at,
            "acquired_at": case((ours, c.acquired_at), else_=new.acquired_at),
            "generation": case((ours, c.generation), else_=c.generation + 1),
        },
        where=ours | (c.expires_at <= new.acquired_at),
    )


@dataclass(frozen=True, slots=True)
class LeaseState:
    holder: str
    expires_at: float
    acquired_at: float
    generation: int


class Lease:
    def __init__(
        self,
        engine: Engine,
        name: str,
        holder: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._engine = engine
        self.name = name
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._upsert = lease_upsert(engine.dialect.name, leases, [leases.c.name]).returning(
            leases.c.generation
        )

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours; False while
        another holder's lease runs. A database error is a StoreError (retriable when the
        database is unreachable): the caller must then act as if it does not hold it."""
        now = self._clock()
        values = {
            "name": self.name,
            "holder": self.holder,
            "expires_at": now + self.ttl_seconds,
            "acquired_at": now,
            "generation": 1,
        }
        try:
            with self._engine.begin() as conn:
                return conn.execute(self._upsert, values).first() is not None
        except OperationalError as exc:
            raise StoreError(f"lease {self.name!r}: {exc}", retriable=True) from exc

    def release(self) -> None:
        """Give it up now (clean shutdown), so another replica need not wait for expiry.
        Releasing a lease someone else holds does nothing."""
        with self._engine.begin() as conn:
            conn.execute(
                delete(leases).where(leases.c.name == self.name, leases.c.holder == self.holder)
            )

    def state(self) -> LeaseState | None:
        """Who holds it and until when (expired holders included), for status displays."""
        with self._engine.connect() as conn:
            row = conn.execute(select(leases).where(leases.c.name == self.name)).first()
        if row is None:
            return None
        return LeaseState(row.holder, row.expires_at, row.acquired_at, row.generation)
