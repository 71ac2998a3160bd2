"""Scheduled rule evaluation benchmark: 500 threshold rules evaluated every 10 s over a store
of 1M events, then 10M; one cycle must stay under a second and must not grow with history.

1. A SQLite store is filled with N history events (generated in SQL: fast, and the same
   rows a real ingest stores) at a steady `--rate` up to now, so a bigger N means a longer
   history at the same density, not a busier window.
2. The scheduler warms up (window counts from the longest window, 1 h).
3. `--cycles` cycles: each stores `--rate` x 10 s fresh events through the normal write path
   (not timed), advances the injected clock 10 s and times `Scheduler.run_once()`: read the
   new events, count them into 500 rules, evaluate every rule and group, write the alerts.

    python benchmarks/rules_eval.py [--events 1000000 10000000] [--rules 500] [--cycles 30]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from consumers.model.events import RunStatusEvent
from consumers.rules.engine import RuleSet
from consumers.rules.model import Rule
from consumers.service.scheduler import Scheduler
from consumers.store import Store, open_store

EXPERIMENTS = 50
WORKSPACES = 5
TEAMS = 7
STATUSES = ["Queued", "Running", "Running", "Completed", "Completed", "Completed", "Failed"]


class HeldLease:
    """One replica in the benchmark: it always holds the lease."""

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


def make_rules(count: int, rate: float, seed: int = 7) -> list[Rule]:
    """A realistic mix: per-experiment failure counts, per-workspace and per-team ratios,
    glob filters, tag group-bys, some N-of-M; all evaluated every 10 s. Limits sit around
    the normal failure rate at `rate` events/s, so that some groups fire and resolve."""
    rng = random.Random(seed)
    failed_per_s = rate * STATUSES.count("Failed") / len(STATUSES)
    windows = {"5m": 300, "15m": 900, "1h": 3600}

    def normal(window: str, share: float) -> int:
        return max(3, int(failed_per_s * windows[window] * share * rng.uniform(1.0, 1.5)))

    rules: list[Rule] = []
    for i in range(count):
        shape = i % 4
        window = rng.choice(list(windows))
        spec: dict[str, Any] = {"every": "10s", "window": window, "resolve_after": 2}
        when: dict[str, Any] = {"status": ["Failed"]}
        if shape == 0:
            when["experiment"] = f"exp{rng.randrange(EXPERIMENTS)}"
            spec |= {"value": normal(window, 1 / EXPERIMENTS), "op": ">="}
        elif shape == 1:
            when["experiment"] = f"exp{rng.randrange(5)}*"
            share = 1 / 5 / WORKSPACES  # exp0* is exp0 and exp0..: a fifth of the experiments
            spec |= {"value": normal(window, share), "group_by": ["WorkspaceName"]}
        elif shape == 2:
            spec |= {
                "measure": "ratio",
                "of": {"status": ["Completed", "Failed", "Canceled"]},
                "value": rng.choice([0.3, 0.35, 0.4]),
                "op": ">",
                "min_events": 10,
                "group_by": ["WorkspaceName", "tags.team"],
            }
        else:
            when["workspace"] = f"ws{rng.randrange(WORKSPACES)}"
            spec |= {
                "value": normal(window, 1 / WORKSPACES / EXPERIMENTS),
                "group_by": ["ExperimentName"],
                "breaches": 2,
                "periods": 3,
            }
        rules.append(
            Rule.model_validate(
                {"name": f"t{i}", "when": when, "threshold": spec, "notify": ["oncall"]}
            )
        )
    return rules


def fill_history(store: Store, events: int, end: datetime, rate: float) -> float:
    """N events at `rate` per second ending at `end`, generated inside SQLite."""
    start = end - timedelta(seconds=events / rate)
    spacing = 1.0 / rate
    statuses = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATUSES))
    began = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(
            text(
                f"""
                WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
                INSERT INTO events (TimeGenerated, RunId, Status, ExperimentName,
                                    WorkspaceName, Level, Tags, Properties, IngestedAt)
                SELECT strftime('%Y-%m-%d %H:%M:%f000', :start,
                                '+' || (x * :spacing) || ' seconds'),
                       'h' || x,
                       CASE x % {len(STATUSES)} {statuses} END,
                       'exp' || (x % {EXPERIMENTS}),
                       'ws' || (x % {WORKSPACES}),
                       'Informational',
                       '{{"team": "t' || (x % {TEAMS}) || '"}}',
                       '{{}}',
                       :start
                FROM c
                """
            ),
            {"n": events, "start": start.strftime("%Y-%m-%d %H:%M:%S"), "spacing": spacing},
        )
    return time.perf_counter() - began


def fresh_events(at: datetime, count: int, rng: random.Random, serial: int) -> list[RunStatusEvent]:
    out = []
    for i in range(count):
        out.append(
            RunStatusEvent(
                TimeGenerated=at - timedelta(seconds=rng.random() * 10),
                RunId=f"n{serial}-{i}",
                Status=rng.choice(STATUSES),
                ExperimentName=f"exp{rng.randrange(EXPERIMENTS)}",
                WorkspaceName=f"ws{rng.randrange(WORKSPACES)}",
                Tags={"team": f"t{rng.randrange(TEAMS)}"},
            )
        )
    return out


def run(events: int, rules: list[Rule], cycles: int, rate: float) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="runwatch-rules-bench-"))
    store = open_store(f"sqlite:///{folder / 'bench.db'}", migrate=True)
    now = datetime.now(UTC).replace(microsecond=0)
    filled = fill_history(store, events, now, rate)
    ruleset = RuleSet(rules)
    clock = [now]
    scheduler = Scheduler(
        store,
        lambda: ruleset,
        HeldLease(),
        receiver_kinds={"oncall": "email"},
        clock=lambda: clock[0],
    )
    began = time.perf_counter()
    scheduler.run_once()
    warm = time.perf_counter() - began
    rng = random.Random(1)
    times: list[float] = []
    alerts = 0
    per_cycle = int(rate * 10)
    for i in range(cycles):
        clock[0] += timedelta(seconds=10)
        store.write_batch(fresh_events(clock[0], per_cycle, rng, i))
        began = time.perf_counter()
        cycle = scheduler.run_once()
        times.append(time.perf_counter() - began)
        assert cycle.events == per_cycle, cycle
        alerts += cycle.alerts
    store.dispose()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    times.sort()
    return {
        "fill_s": filled,
        "warm_s": warm,
        "median_s": statistics.median(times),
        "p90_s": times[int(0.9 * (len(times) - 1))],
        "max_s": times[-1],
        "alerts": alerts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    args = parser.parse_args(argv)
    rules = make_rules(args.rules, args.rate)
    print(
        f"{args.rules} threshold rules every 10 s; {args.rate * 10:.0f} new events per cycle; "
        f"history at the same {args.rate:g} events/s"
    )
    print(f"{'history':>12} {'fill':>8} {'warm-up':>8} {'median':>8} {'p90':>8} {'max':>8}  alerts")
    ok = True
    for count in args.events:
        r = run(count, rules, args.cycles, args.rate)
        print(
            f"{count:>12,} {r['fill_s']:>7.1f}s {r['warm_s']:>7.2f}s "
            f"{r['median_s'] * 1000:>6.0f}ms "
            f"{r['p90_s'] * 1000:>6.0f}ms {r['max_s'] * 1000:>6.0f}ms  {r['alerts']:.0f}",
            flush=True,
        )
        ok = ok and r["max_s"] < 1.0
    print("target: one cycle < 1 s:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
