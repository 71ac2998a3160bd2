"""The store alone: `Store.write_batch` of simulated events, no Kafka and no decoding, into a
fresh SQLite file and a fresh PostgreSQL database (partitioned events table), so the write
path's own cost is measured apart from everything around it.

Each batch is written once (new rows) and then again (all duplicates: a Kafka redelivery);
rate = events / seconds spent in write_batch, per pass; and the CPU the writing process
itself spent per event (what a replica's GIL pays; the database's own CPU is not in it).

With --notify, every Failed event of a batch raises an alert to two receivers (throttled
per run and status for an hour, as the shipped rules do), recorded in the batch's transaction
as `serve` does: the outbox rows' cost is then part of the figure.

    python benchmarks/store_write.py [--events 50000] [--batch 5000] [--notify]
                                     [--profile sqlite|pg]
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
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.outbox.recorder import recording
from consumers.store import open_store

RECEIVERS = {"mail": "email", "hook": "webhook"}


def failed_alerts(batch: list[RunStatusEvent]) -> list[Alert]:
    """What a Failed rule raises for the batch (the shipped rules' throttle)."""
    return [
        Alert(
            rule="bench-failed",
            severity=1,
            receivers=tuple(RECEIVERS),
            throttle_key=f"RunId={event.RunId}|Status={event.Status}",
            throttle_s=3600.0,
            event=event,
        )
        for event in batch
        if event.Status == "Failed"
    ]


def passes(
    url: str, batches: list[list[RunStatusEvent]], notify: bool
) -> tuple[float, float, float, int]:
    """(events/s new, events/s redelivered, client CPU us per event over both passes,
    notification rows stored)"""
    store = open_store(url)
    alerts = [failed_alerts(batch) if notify else [] for batch in batches]
    try:
        rates = []
        cpu = 0.0
        for _ in range(2):  # new rows, then the same batches again
            spent = 0.0
            for batch, raised in zip(batches, alerts, strict=True):
                started, started_cpu = time.perf_counter(), time.process_time()
                store.write_batch(batch, record=recording(raised, RECEIVERS))
                spent += time.perf_counter() - started
                cpu += time.process_time() - started_cpu
            rates.append(sum(map(len, batches)) / spent)
        with store.engine.connect() as conn:
            rows = int(conn.exec_driver_sql("SELECT count(*) FROM notifications").scalar_one())
        return rates[0], rates[1], cpu / (2 * sum(map(len, batches))) * 1e6, rows
    finally:
        store.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--notify", action="store_true", help="alerts for Failed events")
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
                    profile.runcall(passes, url, batches, args.notify)
                    pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
                    continue
                new, again, cpu, rows = passes(url, batches, args.notify)
                print(
                    f"write_batch {label:<10} batches of {args.batch:,}: "
                    f"{new:>9,.0f} events/s new, {again:>9,.0f} events/s redelivered, "
                    f"client CPU {cpu:.1f} us/event, {rows:,} notifications"
                )
        finally:
            for name in names:
                drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
