"""The store alone: `Store.write_batch` of simulated events, no Kafka and no decoding, into a
fresh SQLite file and a fresh PostgreSQL database (partitioned events table), so the write
path's own cost is measured apart from everything around it.

Each batch is written once (new rows) and then again (all duplicates: a Kafka redelivery);
rate = events / seconds spent in write_batch, per pass; and the CPU the writing process
itself spent per event (what a replica's GIL pays; the database's own CPU is not in it).

    python benchmarks/store_write.py [--events 50000] [--batch 5000] [--profile sqlite|pg]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale import drop_database, fresh_store

from consumers.demo.simulator import Simulator
from consumers.model.events import RunStatusEvent
from consumers.store import open_store


def passes(url: str, batches: list[list[RunStatusEvent]]) -> tuple[float, float, float]:
    """(events/s new, events/s redelivered, client CPU us per event over both passes)"""
    store = open_store(url)
    try:
        rates = []
        cpu = 0.0
        for _ in range(2):  # new rows, then the same batches again
            spent = 0.0
            for batch in batches:
                started, started_cpu = time.perf_counter(), time.process_time()
                store.write_batch(batch)
                spent += time.perf_counter() - started
                cpu += time.process_time() - started_cpu
            rates.append(sum(map(len, batches)) / spent)
        return rates[0], rates[1], cpu / (2 * sum(map(len, batches))) * 1e6
    finally:
        store.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--profile", choices=("sqlite", "pg"), help="cProfile one store's pass")
    args = parser.parse_args()
    events = list(Simulator(seed=7).events(args.events))
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    names: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for label, kind in (("SQLite", "sqlite"), ("PostgreSQL", "pg")):
                url = fresh_store(kind, Path(tmp), names)
                if args.profile == kind:
                    profile = cProfile.Profile()
                    profile.runcall(passes, url, batches)
                    pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
                    continue
                new, again, cpu = passes(url, batches)
                print(
                    f"write_batch {label:<10} batches of {args.batch:,}: "
                    f"{new:>9,.0f} events/s new, {again:>9,.0f} events/s redelivered, "
                    f"client CPU {cpu:.1f} us/event"
                )
        finally:
            for name in names:
                drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
