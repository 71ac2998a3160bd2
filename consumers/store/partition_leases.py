"""Partition leases (`kafka.assignment: store`): replicas share a topic's partitions through
the store, not through the broker's consumer group, whose rebalances pause every partition
and which the bundled broker holds for half a session timeout each (docs/deploys.md).

Each heartbeat, in one transaction, a replica renews its member row and its leases, counts the live
members (rows renewed within `stale_after`) and works out its fair share: partitions // members, one
more for the first partitions % members of them in member order. Below its share it takes free or
expired leases with the conditional upsert of the named leases (lease.py: a takeover increments the
generation, two replicas racing cannot both win); above it, it is told which to give back, and gives
them back (release()) once it has committed what it stored of them. A replica that leaves releases
everything at once; one that is killed loses its leases when they expire, `ttl_seconds` after its
last heartbeat. It stops counting as a member sooner, `stale_after` after its last heartbeat (a few
heartbeats): counting it until its leases expire would keep the others at their old shares, and when
two replicas die in a row (a rolling restart with SIGKILL), the first one's expired partitions would
wait for the second one's expiry too. Only the count moves early; a lease is taken only once
expired.
Expiry is judged by the clock of the replica asking, as for the named leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.exc import OperationalError

from consumers.model.errors import StoreError
from consumers.store.dialects import dialect_module
from consumers.store.lease import lease_upsert
from consumers.store.schema import assignment_members, partition_leases

_members = assignment_members.c
_leases = partition_leases.c


@dataclass(frozen=True, slots=True)
class Plan:
    """One heartbeat's outcome: the partitions held now (taken ones included, and those to
    give back), and those above the fair share, to commit and then release()."""

    held: frozenset[int]
    taken: frozenset[int]
    give_back: frozenset[int]
    members: int
    share: int


def fair_share(partitions: int, members: list[str], member: str) -> int:
    """Every member's share adds up to `partitions`; the first members in sorted order take
    the remainder, so that every replica computes the same split."""
    if not members:
        return partitions
    rank = sorted(members).index(member) if member in members else len(members)
    return partitions // len(members) + (1 if rank < partitions % len(members) else 0)


class PartitionLeases:
    def __init__(
        self,
        engine: Engine,
        group: str,
        topic: str,
        holder: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        stale_after: float | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.stale_after = min(stale_after or ttl_seconds, ttl_seconds)
        self._engine = engine
        self.group = group
        self.topic = topic
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._held: dict[int, int] = {}  # partition -> generation it was taken in
        dialect = engine.dialect.name
        self._take = lease_upsert(
            dialect,
            partition_leases,
            [_leases.consumer_group, _leases.topic, _leases.partition],
        ).returning(_leases.generation)
        proposed = dialect_module(dialect).insert(assignment_members)
        self._join = proposed.on_conflict_do_update(
            index_elements=[_members.consumer_group, _members.topic, _members.member],
            set_={
                "renewed_at": proposed.excluded.renewed_at,
                "expires_at": proposed.excluded.expires_at,
            },
        )
        self._ours = (
            (_leases.consumer_group == group)
            & (_leases.topic == topic)
            & (_leases.holder == holder)
        )

    @property
    def held(self) -> dict[int, int]:
        """Partition -> generation, as of the last heartbeat."""
        return dict(self._held)

    def heartbeat(self, partitions: int) -> Plan:
        """Renew, count the members, take up to the fair share of `partitions`. A database
        error is a StoreError: the leases held stay as they were until the next heartbeat."""
        now = self._clock()
        until = now + self.ttl_seconds
        group = (_members.consumer_group == self.group) & (_members.topic == self.topic)
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    self._join,
                    {
                        "consumer_group": self.group,
                        "topic": self.topic,
                        "member": self.holder,
                        "renewed_at": now,
                        "expires_at": until,
                    },
                )
                renewed = {
                    row.partition: row.generation
                    for row in conn.execute(
                        update(partition_leases)
                        .where(self._ours, _leases.partition.in_(list(self._held)))
                        .values(expires_at=until)
                        .returning(_leases.partition, _leases.generation)
                    )
                    if row.partition < partitions
                }
                members = list(
                    conn.execute(
                        select(_members.member).where(
                            group, _members.renewed_at > now - self.stale_after
                        )
                    ).scalars()
                )
                share = fair_share(partitions, members, self.holder)
                taken: dict[int, int] = {}
                if len(renewed) < share:
                    taken = self._take_free(conn, partitions, renewed, share, now, until)
        except OperationalError as exc:
            raise StoreError(f"partition leases of {self.group!r}: {exc}", retriable=True) from exc
        self._held = {**renewed, **taken}
        over = len(self._held) - share
        give_back = sorted(self._held, reverse=True)[:over] if over > 0 else []
        return Plan(
            held=frozenset(self._held),
            taken=frozenset(taken),
            give_back=frozenset(give_back),
            members=len(members),
            share=share,
        )

    def _take_free(
        self,
        conn: Connection,
        partitions: int,
        held: dict[int, int],
        share: int,
        now: float,
        until: float,
    ) -> dict[int, int]:
        busy = set(
            conn.execute(
                select(_leases.partition).where(
                    _leases.consumer_group == self.group,
                    _leases.topic == self.topic,
                    _leases.expires_at > now,
                )
            ).scalars()
        )
        taken: dict[int, int] = {}
        for partition in range(partitions):
            if len(held) + len(taken) >= share:
                break
            if partition in held or partition in busy:
                continue
            row = conn.execute(
                self._take,
                {
                    "consumer_group": self.group,
                    "topic": self.topic,
                    "partition": partition,
                    "holder": self.holder,
                    "expires_at": until,
                    "acquired_at": now,
                    "generation": 1,
                },
            ).first()
            if row is not None:
                taken[partition] = row.generation
        return taken

    def release(self, partitions: Iterable[int]) -> None:
        """Give leases back now (above the fair share, or at shutdown) so that another
        replica takes them at its next heartbeat. The row stays, expired, so that the next
        taker's generation is higher still. Only ours are touched."""
        chosen = [p for p in partitions if p in self._held]
        if not chosen:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    update(partition_leases)
                    .where(self._ours, _leases.partition.in_(chosen))
                    .values(expires_at=0.0)
                )
        except OperationalError as exc:
            raise StoreError(f"partition leases of {self.group!r}: {exc}", retriable=True) from exc
        for partition in chosen:
            self._held.pop(partition, None)

    def leave(self) -> None:
        """Clean shutdown: every lease back, and no longer counted as a member (the others'
        shares grow at their next heartbeat)."""
        self.release(list(self._held))
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    delete(assignment_members).where(
                        _members.consumer_group == self.group,
                        _members.topic == self.topic,
                        _members.member == self.holder,
                    )
                )
        except OperationalError as exc:
            raise StoreError(f"partition leases of {self.group!r}: {exc}", retriable=True) from exc

    def holders(self) -> dict[int, tuple[str, float, int]]:
        """Partition -> (holder, expires_at, generation), expired ones included: for tests
        and status displays."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    _leases.partition, _leases.holder, _leases.expires_at, _leases.generation
                ).where(_leases.consumer_group == self.group, _leases.topic == self.topic)
            ).all()
        return {row.partition: (row.holder, row.expires_at, row.generation) for row in rows}
