"""Web console page latency with 1M events stored.

Fills a fresh store (SQLite; PostgreSQL too with --pg) with EVENTS events: runs of four
events each (Queued, Running, then Completed, Failed or Canceled) over the last DAYS days,
a fifth of them steps of pipelines, the failures carrying the real messages of
tests/samples/failure_messages/ (one in a hundred with a 200 KB log in front), and one
notification per failed or canceled run in the states a service records (sent, dead,
silenced, inhibited, ...). Then serves the console on the ops server, in this process as
`runwatch serve` does, and times REQUESTS sequential GETs of each page over HTTP: the
failures page, a failed run's page (a different run each time), the notifications (all,
and dead only), and the silences. Prints p50 / p99 / max per page.

    python benchmarks/console.py [--events 1000000] [--requests 200] [--pg]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql

sys.path.insert(0, str(Path(__file__).parent))
from percentiles import pct

from consumers.config.settings import Settings
from consumers.model.events import STATUS_RANK
from consumers.service.endpoints import OpsServer
from consumers.store import Store, open_store
from consumers.store.schema import events, notifications, runs, silences
from consumers.webconsole.routes import Console

PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
SAMPLES = Path(__file__).parent.parent / "tests" / "samples" / "failure_messages"
BATCH = 20_000
FATES = [
    ("sent", None, None),
    ("sent", None, None),
    ("sent", None, None),
    ("dead", "smtp_5xx", "550 5.1.1 mailbox unavailable"),
    ("silenced", "silence:bench0000000001", None),
    ("inhibited", "inhibited:cluster-down", None),
    ("throttled", "throttled", None),
    ("repeat", "repeat", None),
]


def fill(store: Store, total: int, days: float, seed: int = 7) -> list[str]:
    """Returns the ids of the failed runs."""
    rng = random.Random(seed)
    messages = [p.read_text() for p in sorted(SAMPLES.glob("*.txt"))]
    big_log = "\n".join(f"step {i}: loss={rng.random():.5f} lr=3e-4" for i in range(6000))
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    span = (now - start).total_seconds()
    n_runs = total // 4
    failed: list[str] = []
    ev_batch: list[dict[str, Any]] = []
    run_batch: list[dict[str, Any]] = []
    note_batch: list[dict[str, Any]] = []
    experiments = [f"exp-{i:03d}" for i in range(120)]
    parent: str | None = None
    began = time.monotonic()

    def flush(force: bool = False) -> None:
        if len(ev_batch) < BATCH and not force:
            return
        with store.engine.begin() as conn:
            if ev_batch:
                conn.execute(events.insert(), ev_batch)
            if run_batch:
                conn.execute(runs.insert(), run_batch)
            if note_batch:
                conn.execute(notifications.insert(), note_batch)
        ev_batch.clear()
        run_batch.clear()
        note_batch.clear()

    for index in range(n_runs):
        run_id = f"run-{index:07d}-{uuid.uuid4().hex[:6]}"
        if index % 5 == 0:
            parent = run_id
            parent_id = None
        else:
            parent_id = parent
        t0 = start + timedelta(seconds=span * index / n_runs)
        roll = rng.random()
        final = "Completed" if roll < 0.85 else ("Failed" if roll < 0.97 else "Canceled")
        message = None
        if final == "Failed":
            message = rng.choice(messages)
            if rng.random() < 0.01:
                message = big_log + "\n" + message
            failed.append(run_id)
        experiment = rng.choice(experiments)
        times = [t0, t0 + timedelta(seconds=30), t0 + timedelta(seconds=30 + rng.randint(60, 7200))]
        steps = [("Queued", times[0]), ("Running", times[1]), (final, times[2])]
        steps.append(("Finalizing", times[2] - timedelta(seconds=5)))
        common = {
            "RunId": run_id,
            "ParentRunId": parent_id,
            "RootRunId": parent_id or run_id,
            "ExperimentName": experiment,
            "WorkspaceName": "ws-bench",
            "Level": "Informational",
            "Tags": {"team": "vision", "model": experiment},
            "Properties": {"azureml.runsource": "azureml.scriptrun"},
            "IngestedAt": times[2],
        }
        for status, at in steps:
            ev_batch.append(
                common
                | {
                    "TimeGenerated": at,
                    "Status": status,
                    "Message": message if status == final else None,
                }
            )
        run_batch.append(
            {
                key: common[key]
                for key in ("RunId", "ParentRunId", "RootRunId", "ExperimentName", "WorkspaceName")
            }
            | {
                "Status": final,
                "StatusTime": times[2],
                "StatusRank": STATUS_RANK[final],
                "Message": message,
                "Tags": common["Tags"],
                "Properties": common["Properties"],
                "FirstSeen": times[0],
                "LastSeen": times[2],
                "StartTime": times[1],
                "EndTime": times[2],
            }
        )
        if final != "Completed":
            state, reason, error = rng.choice(FATES)
            note_batch.append(
                {
                    "id": uuid.uuid4().hex,
                    "dedup_key": uuid.uuid4().hex,
                    "rule": "run-failed" if final == "Failed" else "run-canceled",
                    "severity": 1,
                    "fingerprint": run_id,
                    "throttle_key": run_id,
                    "receiver": "ml-oncall",
                    "receiver_type": "email",
                    "followup": False,
                    "state": state,
                    "attempts": 1 if state in ("sent", "dead") else 0,
                    "run_id": run_id,
                    "status": final,
                    "event_time": times[2],
                    "alert": {"rule": "run-failed", "labels": {"experiment": experiment}},
                    "created_at": times[2],
                    "next_attempt_at": times[2],
                    "sent_at": times[2] if state == "sent" else None,
                    "reason": reason,
                    "last_error": error,
                    "kind": "alert",
                }
            )
        flush()
        if index % 25_000 == 0 and index:
            rate = index * 4 / (time.monotonic() - began)
            print(f"  {index * 4:>9,} events stored ({rate:,.0f}/s)", flush=True)
    flush(force=True)
    with store.engine.begin() as conn:
        conn.execute(
            silences.insert(),
            [
                {
                    "id": "bench0000000001",
                    "matchers": ["experiment=exp-001"],
                    "starts_at": start,
                    "ends_at": now + timedelta(days=1),
                    "created_by": "bench",
                    "comment": "benchmark",
                    "created_at": start,
                }
            ],
        )
    return failed


def measure(store: Store, url: str, failed: list[str], requests: int) -> dict[str, list[float]]:
    settings = Settings.model_validate(
        {"store": {"url": url}, "metrics": {"listen": "127.0.0.1:0"}, "console": {"enabled": True}}
    )
    console = Console(store, settings, wake=lambda: None)
    ops = OpsServer(
        ("127.0.0.1", 0), CollectorRegistry(), dict, None, extensions=(console.install,)
    ).start()
    base = f"http://127.0.0.1:{ops.port}/console"
    rng = random.Random(3)
    pages = {
        "failures": lambda: "/",
        "run": lambda: f"/runs/{rng.choice(failed)}",
        "notifications": lambda: "/notifications",
        "notifications dead": lambda: "/notifications?state=dead",
        "silences": lambda: "/silences",
    }
    out: dict[str, list[float]] = {}
    try:
        for name, path in pages.items():
            for _ in range(3):  # warm: connections, caches, templates compiled
                urllib.request.urlopen(base + path(), timeout=60).read()
            times = []
            for _ in range(requests):
                began = time.perf_counter()
                with urllib.request.urlopen(base + path(), timeout=60) as response:
                    response.read()
                    assert response.status == 200
                times.append((time.perf_counter() - began) * 1000)
            out[name] = times
    finally:
        ops.stop()
    return out


def report(label: str, results: dict[str, list[float]]) -> None:
    print(f"{label}: page latency over HTTP, ms")
    print(f"  {'page':<20} {'p50':>8} {'p99':>8} {'max':>8}")
    for name, times in results.items():
        print(f"  {name:<20} {pct(times, 0.5):>8.1f} {pct(times, 0.99):>8.1f} {max(times):>8.1f}")


def run(label: str, url: str, args: argparse.Namespace) -> None:
    store = open_store(url, migrate=True)
    try:
        now = datetime.now(UTC)
        store.ensure_partitions(
            now - timedelta(days=args.days + 1), interval_hours=24, ahead=int(args.days) + 3
        )
        print(f"{label}: filling {args.events:,} events", flush=True)
        began = time.monotonic()
        failed = fill(store, args.events, args.days)
        print(f"{label}: filled in {time.monotonic() - began:.0f} s; {len(failed):,} failed runs")
        if store.engine.dialect.name == "postgresql":
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
        report(label, measure(store, url, failed, args.requests))
    finally:
        store.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--pg", action="store_true", help="PostgreSQL too (127.0.0.1:5432)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run("sqlite", f"sqlite:///{Path(folder) / 'console.db'}", args)
    if args.pg:
        name = f"runwatch_console_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            run("postgresql", f"postgresql://postgres@127.0.0.1/{name}", args)
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
