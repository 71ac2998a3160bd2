"""`consumers.store.partition_leases` (`kafka.assignment: store`): fair shares of the live
members, giving back above the share, release at stop, takeover after expiry with a higher
generation; on SQLite and PostgreSQL with a clock under the test's control."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consumers.store import Store
from consumers.store.partition_leases import PartitionLeases, fair_share
from tests.test_lease import Clock, emptied_after

TTL = 6.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, store_url: str) -> Iterator[Store]:
    yield from emptied_after(request, store_url, "partition_leases", "assignment_members")


def _replicas(db: Store, clock: Clock, *names: str) -> list[PartitionLeases]:
    return [PartitionLeases(db.engine, "g", "runs", name, TTL, clock=clock) for name in names]


def _owners(leases: PartitionLeases, clock: Clock) -> dict[int, str]:
    return {p: h for p, (h, until, _) in leases.holders().items() if until > clock.now}


def test_fair_shares_add_up_and_the_first_members_take_the_remainder() -> None:
    members = ["c", "a", "b"]
    assert [fair_share(4, members, m) for m in ("a", "b", "c")] == [2, 1, 1]
    assert sum(fair_share(7, members, m) for m in members) == 7
    assert fair_share(3, [], "a") == 3


def test_a_joining_replica_gets_its_share_given_back_then_taken(db: Store) -> None:
    clock = Clock()
    a, b = _replicas(db, clock, "a", "b")
    first = a.heartbeat(4)
    assert (first.held, first.taken, first.give_back) == ({0, 1, 2, 3}, {0, 1, 2, 3}, set())

    joined = b.heartbeat(4)  # counted now, but every partition is a's: nothing free yet
    assert (joined.held, joined.members, joined.share) == (set(), 2, 2)
    over = a.heartbeat(4)
    assert over.share == 2 and over.give_back == {2, 3}  # the highest, after a commit
    assert not b.heartbeat(4).held  # not before a released them
    a.release(over.give_back)
    took = b.heartbeat(4)
    assert took.taken == took.held == {2, 3}
    assert _owners(a, clock) == {0: "a", 1: "a", 2: "b", 3: "b"}
    generations = {p: g for p, (_, _, g) in a.holders().items()}
    assert generations == {0: 1, 1: 1, 2: 2, 3: 2}  # a takeover moves the generation on
    steady = a.heartbeat(4), b.heartbeat(4)
    assert [(s.taken, s.give_back) for s in steady] == [(set(), set())] * 2


def test_a_leaving_replica_frees_everything_for_the_next_heartbeat(db: Store) -> None:
    clock = Clock()
    a, b = _replicas(db, clock, "a", "b")
    a.heartbeat(3)
    b.heartbeat(3)
    a.release(a.heartbeat(3).give_back)
    b.heartbeat(3)
    assert sorted(_owners(a, clock).values()) == ["a", "a", "b"]
    a.leave()
    clock.now += 0.3
    after = b.heartbeat(3)
    assert (after.members, after.held) == (1, {0, 1, 2})


def test_a_killed_replicas_partitions_move_when_its_leases_expire(db: Store) -> None:
    clock = Clock()
    a, b = _replicas(db, clock, "a", "b")
    a.heartbeat(4)
    b.heartbeat(4)
    a.release(a.heartbeat(4).give_back)
    b.heartbeat(4)
    killed_at = clock.now  # a stops renewing
    clock.now = killed_at + TTL - 0.1
    waiting = b.heartbeat(4)
    assert waiting.held == {2, 3} and waiting.members == 2  # a's leases still run
    clock.now = killed_at + TTL
    took = b.heartbeat(4)
    assert (took.members, took.taken, took.held) == (1, {0, 1}, {0, 1, 2, 3})
    assert {p: g for p, (_, _, g) in b.holders().items()} == {0: 2, 1: 2, 2: 2, 3: 2}
    # a, back from a pause rather than dead, finds its leases gone and takes none while b
    # holds its (now larger) share; it is given its share back by b's next heartbeats
    back = a.heartbeat(4)
    assert (back.held, back.members) == (set(), 2)
    assert b.heartbeat(4).give_back == {2, 3}


def test_two_replicas_killed_in_a_row_free_the_first_ones_partitions_at_its_expiry(
    db: Store,
) -> None:
    """A rolling restart with SIGKILL: a dies, c (its replacement) joins, then b dies before
    a's leases expire. A member that stopped renewing stops counting after a few heartbeats,
    so c's share covers a's partitions when they expire; counted until b's own expiry, b kept
    c at half and one of a's partitions waited for that too (9.6 s in the benchmark)."""
    clock = Clock()
    a, b, c = (
        PartitionLeases(db.engine, "g", "runs", name, TTL, clock=clock, stale_after=1.5)
        for name in ("a", "b", "c")
    )
    a.heartbeat(4)
    b.heartbeat(4)
    a.release(a.heartbeat(4).give_back)
    b.heartbeat(4)
    assert _owners(a, clock) == {0: "a", 1: "a", 2: "b", 3: "b"}
    killed = clock.now  # a's last heartbeat
    clock.now = killed + 2
    c.heartbeat(4)
    b.release(b.heartbeat(4).give_back)  # a no longer counts: b keeps its two
    c.heartbeat(4)
    clock.now = killed + TTL  # b, killed too, last renewed at +2
    after = c.heartbeat(4)
    assert after.members == 1
    assert {0, 1} <= after.held, after
