"""`consumers.store.lease`: one holder at a time, expiry, takeover, renewal, release, on
SQLite and PostgreSQL; failover between real processes."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.store import Store, open_store
from consumers.store.lease import Lease


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def emptied_after(request: pytest.FixtureRequest, store_url: str, *tables: str) -> Iterator[Store]:
    """A migrated store of the fixture's backend ("sqlite" or "postgresql"), its `tables`
    emptied after the test (the PostgreSQL database is shared between tests)."""
    url = store_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = open_store(url, migrate=True)
    yield opened
    with opened.engine.begin() as conn:
        for table in tables:
            conn.exec_driver_sql(f"DELETE FROM {table}")
    opened.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, store_url: str) -> Iterator[Store]:
    yield from emptied_after(request, store_url, "leases")


def test_one_holder_at_a_time_then_takeover_after_expiry(db: Store) -> None:
    clock = Clock()
    a = Lease(db.engine, "rules", "replica-a", 30, clock=clock)
    b = Lease(db.engine, "rules", "replica-b", 30, clock=clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    first = a.state()
    assert first is not None and first.holder == "replica-a" and first.generation == 1

    clock.now += 20
    assert a.try_acquire()  # renewal moves the expiry on, keeps acquisition and generation
    renewed = a.state()
    assert renewed is not None
    assert renewed.expires_at == clock.now + 30
    assert (renewed.acquired_at, renewed.generation) == (first.acquired_at, 1)

    clock.now += 29.9
    assert not b.try_acquire()  # still a's: renewed at +20, expires at +50
    clock.now += 0.1
    assert b.try_acquire()  # expired exactly now: taken over
    taken = b.state()
    assert taken is not None
    assert (taken.holder, taken.generation, taken.acquired_at) == ("replica-b", 2, clock.now)
    assert not a.try_acquire()  # the old holder comes back too late


def test_release_frees_it_at_once_and_only_for_the_holder(db: Store) -> None:
    clock = Clock()
    a = Lease(db.engine, "rules", "replica-a", 30, clock=clock)
    b = Lease(db.engine, "rules", "replica-b", 30, clock=clock)
    other = Lease(db.engine, "compaction", "replica-b", 30, clock=clock)
    assert a.try_acquire()
    assert other.try_acquire()  # leases are independent by name
    b.release()  # not b's: nothing happens
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()
    assert a.state() is not None and a.state().holder == "replica-b"  # type: ignore[union-attr]


def test_ttl_must_be_positive(db: Store) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        Lease(db.engine, "rules", "a", 0)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from consumers.store import open_store
    from consumers.store.lease import Lease

    url, holder, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = open_store(url)
    lease = Lease(store.engine, "rules", holder, ttl)
    while True:
        if lease.try_acquire():
            print("holding", flush=True)
        time.sleep(ttl / 5)
    """
)


def _holder(url: str, name: str, ttl: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, name, str(ttl)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _first_line(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return process.stdout.readline().strip()


def test_failover_between_processes(pg_url: str, tmp_path: Path) -> None:
    """Two processes renew the same lease; SIGKILL the holder and the other takes over
    within the TTL (plus one renewal period), never while the first still holds it."""
    store = open_store(pg_url, migrate=True)
    ttl = 1.0
    probe = Lease(store.engine, "rules", "probe", ttl)
    first = _holder(pg_url, "first", ttl)
    second: subprocess.Popen[str] | None = None
    try:
        assert _first_line(first) == "holding"
        second = _holder(pg_url, "second", ttl)
        time.sleep(3 * ttl)  # second keeps trying all along and never gets it
        state = probe.state()
        assert state is not None and (state.holder, state.generation) == ("first", 1)
        first.kill()
        first.wait()
        killed_at = time.time()
        assert _first_line(second) == "holding"
        took = time.time() - killed_at
        assert took <= ttl + ttl / 5 + 0.5, took
        state = probe.state()
        assert state is not None and (state.holder, state.generation) == ("second", 2)
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()
                assert process.stdout is not None
                process.stdout.close()
        store.dispose()
