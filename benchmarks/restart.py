"""Deploy benchmark: how long failures go unmailed when `runwatch serve` starts or restarts.

1. start: a Failed event is published while `serve` is down (after a first run created the
   group and the store); `serve` is started and the time to the mail at a real SMTP server
   (aiosmtpd, its own process) is measured, with when the consumer got its partitions.
2. rolling: two `serve` replicas in one consumer group on one PostgreSQL store, Failed
   events produced at a steady `--rate`; replica A is stopped (SIGTERM, or SIGKILL with
   `--kill`) and started again, then B. Reported: the largest produce -> mail delay of any
   failure produced from the first stop until both replicas are back (goal: < 2 s graceful,
   < session timeout + 1 s on SIGKILL), against the same figure before the restart;
   `--assignment store` shares the partitions through leases in the store instead of the
   consumer group (kafka.assignment, docs/deploys.md).
3. warm-up: 500 scheduled rules (threshold, absence, duration), a store with `--history`
   events of runs that start, run and end (the runs table filled by the normal write path),
   then the scheduler's first tick, as at start, takeover or reload: the time until the
   rules are evaluated (goal < 1 s). Measured without a window snapshot (the first start
   ever: every rule replays its window), then `--ticks` steady ticks of the lease holder
   (10 s of new events each; the snapshot's share of the tick time), then restarts that
   load the snapshot the holder wrote. `--profile` prints where it goes (cProfile).

Every figure is wall clock on a shared 2-core machine: the broker, PostgreSQL, the SMTP
server, the producer and the replicas all run on those two cores.

    python benchmarks/restart.py [start] [rolling] [warmup] [--kill] [--rate 20]
        [--static] [--assignment group|store] [--kafka session_timeout_ms=6000 ...]
        [--history 300000] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing
import pstats
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import yaml
from rules_eval import (  # benchmarks/, on the path when run as a script
    HeldLease,
    fresh_events,
    make_rules,
)
from sqlalchemy import delete, select

from consumers.config.settings import shipped
from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from consumers.model.events import RunStatusEvent
from consumers.rules.engine import RuleSet
from consumers.rules.model import Rule
from consumers.service.scheduler import Scheduler
from consumers.service.windows import WindowSnapshots
from consumers.store import Store, open_store
from consumers.store.schema import rule_feed, rule_windows

RUNWATCH = str(Path(sys.executable).parent / "runwatch")
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
RULES = """
rules:
  - name: bench-failed
    when: {status: [Failed]}
    notify: [mail]
"""


# -- servers ------------------------------------------------------------------------------


def smtp_catcher(port: int, arrivals: Queue[Any]) -> None:
    """aiosmtpd in its own process: (arrival time, run id) per mail."""
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            text = envelope.content.decode("utf-8", "replace")
            at = text.find("rr-")
            run = text[at:].split()[0].strip(".,;:)<>\"'") if at >= 0 else "?"
            arrivals.put((time.time(), run))
            return "250 OK"

    Controller(Handler(), hostname="127.0.0.1", port=port).start()
    threading.Event().wait()


@contextlib.contextmanager
def throwaway_pg() -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"runwatch_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres@127.0.0.1/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


class Replica:
    """One `runwatch serve` process with its own config and log."""

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "runwatch.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = folder / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._log_at = 0

    def start(self) -> Replica:
        self._log_at = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.started = time.time()
            self.process = subprocess.Popen(
                [RUNWATCH, "serve", "--config", str(self.config)], stdout=out, stderr=out
            )
        return self

    def lines(self) -> list[str]:
        with self.log.open("rb") as log:
            log.seek(self._log_at)
            return log.read().decode("utf-8", "replace").splitlines()

    def assigned(self) -> bool:
        """Holds partitions now (its last assignment was not empty)."""
        last = [line for line in self.lines() if "assigned partitions" in line]
        return bool(last) and not last[-1].rstrip().endswith("[]")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> float:
        """Seconds from the signal to the process's exit."""
        assert self.process is not None
        began = time.time()
        self.process.send_signal(sig)
        self.process.wait(timeout=120)
        return time.time() - began


def wait_for(predicate: Any, timeout: float, what: str) -> float:
    began = time.time()
    while time.time() - began < timeout:
        if predicate():
            return time.time() - began
        time.sleep(0.02)
    raise TimeoutError(f"{what}: not within {timeout}s")


def settings_for(
    bootstrap: str, topic: str, group: str, url: str, smtp: int, rules: Path, kafka: dict[str, Any]
) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "dead_letter_topic": f"{topic}-dead",
            "group_id": group,
            **kafka,
        },
        "store": {"url": url, "migrate_on_start": False},
        "metrics": {"enabled": False},
        "rules_dir": str(rules),
        "templates_dir": str(shipped("templates")),
        "smtp": {"host": "127.0.0.1", "port": smtp, "from": "runwatch <rw@example.com>"},
        "receivers": {"mail": {"email": {"to": ["oncall@example.com"]}}},
    }


def migrate(url: str) -> None:
    open_store(url, migrate=True).dispose()


def failed(run: str) -> bytes:
    event = RunStatusEvent(
        TimeGenerated=datetime.now(UTC), RunId=run, Status="Failed", ExperimentName="restart"
    )
    return event.to_json()


def drain(arrivals: Queue[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(Exception):
        while True:
            at, run = arrivals.get_nowait()
            out.setdefault(run, at)
    return out


# -- 1. start -> first alert ----------------------------------------------------------------


def bench_start(
    bootstrap: str, folder: Path, url: str, smtp: int, arrivals: Queue[Any], kafka: dict[str, Any]
) -> None:
    from kafka import KafkaProducer

    topic = f"start-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: 4, f"{topic}-dead": 1})
    rules = folder / "rules"
    rules.mkdir(parents=True)
    (rules / "rules.yaml").write_text(RULES)
    replica = Replica(
        folder / "serve",
        settings_for(bootstrap, topic, f"g-{uuid.uuid4().hex[:6]}", url, smtp, rules, kafka),
    )
    # A first run creates the group; then it is stopped like a deploy stops it.
    replica.start()
    wait_for(replica.assigned, 60, "first run joined")
    replica.stop()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    results = []
    for attempt in range(3):
        run = f"rr-start-{attempt}"
        producer.send(topic, key=run.encode(), value=failed(run)).get(10)
        drain(arrivals)
        replica.start()
        assigned = wait_for(replica.assigned, 60, "partitions assigned")
        begin = replica.started
        at, got = arrivals.get(timeout=60)
        while got != run:
            at, got = arrivals.get(timeout=60)
        results.append((at - begin, assigned))
        replica.stop()
    producer.close()
    print("1. serve start -> first alert (a Failed event published while serve was down):")
    for total, assigned in results:
        print(f"   {total:5.2f} s to the mail; partitions assigned after {assigned:5.2f} s")
    print(f"   median {statistics.median(r[0] for r in results):.2f} s")


# -- 2. rolling restart ---------------------------------------------------------------------


class SteadyProducer(threading.Thread):
    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
        self.topic = topic
        self.rate = rate
        self.sent: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        begin = time.perf_counter()
        index = 0
        while not self.halt.is_set():
            due = begin + index / self.rate
            if (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)
            run = f"rr-{index}"
            self.sent[run] = time.time()
            self.producer.send(self.topic, key=run.encode(), value=failed(run))
            index += 1
        self.producer.flush()
        self.producer.close()


def bench_rolling(
    bootstrap: str,
    folder: Path,
    url: str,
    smtp: int,
    arrivals: Queue[Any],
    kafka: dict[str, Any],
    rate: float,
    kill: bool,
    static: bool,
) -> None:
    topic = f"roll-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: 4, f"{topic}-dead": 1})
    rules = folder / "rules"
    rules.mkdir(parents=True)
    (rules / "rules.yaml").write_text(RULES)
    group = f"g-{uuid.uuid4().hex[:6]}"
    settings = settings_for(bootstrap, topic, group, url, smtp, rules, kafka)
    replicas = []
    for name in ("a", "b"):
        own = settings
        if static:  # one stable name per replica, as a StatefulSet's pod names
            own = {**settings, "kafka": {**settings["kafka"], "group_instance_id": f"rw-{name}"}}
        replicas.append(Replica(folder / name, own))
    for replica in replicas:
        replica.start()
    wait_for(lambda: all(r.assigned() for r in replicas), 90, "both replicas assigned")
    drain(arrivals)
    producer = SteadyProducer(bootstrap, topic, rate)
    producer.start()
    time.sleep(5)  # steady state before the deploy
    sig = signal.SIGKILL if kill else signal.SIGTERM
    rolled_at = time.time()
    steps = []
    for replica in replicas:
        stopped = replica.stop(sig)
        replica.start()
        joined = wait_for(replica.assigned, 120, "restarted replica assigned")
        steps.append((stopped, joined))
        time.sleep(1.0)  # a deploy waits for readiness before the next pod
    back_at = time.time()
    time.sleep(5)  # and after it
    producer.halt.set()
    producer.join()
    mails: dict[str, float] = {}
    deadline = time.time() + 120
    while len(mails) < len(producer.sent) and time.time() < deadline:
        with contextlib.suppress(Exception):
            at, run = arrivals.get(timeout=0.5)
            mails.setdefault(run, at)
    for replica in replicas:
        replica.stop()
    before = [mails[r] - t for r, t in producer.sent.items() if t < rolled_at and r in mails]
    during = {r: t for r, t in producer.sent.items() if rolled_at <= t <= back_at}
    missing = [r for r in producer.sent if r not in mails]
    delays = sorted((mails[r] - t, r) for r, t in during.items() if r in mails)
    how = ("SIGKILL" if kill else "SIGTERM") + f", assignment: {kafka['assignment']}"
    if static:
        how += ", static membership"
    print(f"2. rolling restart of 2 replicas ({how}), {rate:g} failures/s, settings {kafka}:")
    for name, (stopped, joined) in zip("AB", steps, strict=True):
        print(
            f"   {name}: exited {stopped:5.2f} s after {how}; "
            f"restarted, assigned after {joined:5.2f} s"
        )
    print(
        f"   before: n={len(before)} p50 {statistics.median(before) * 1000:.0f} ms "
        f"max {max(before) * 1000:.0f} ms"
    )
    print(
        f"   during ({back_at - rolled_at:.1f} s): n={len(during)} "
        f"p50 {statistics.median(d for d, _ in delays) * 1000:.0f} ms "
        f"largest {delays[-1][0]:.2f} s; largest five "
        + ", ".join(f"{d:.2f}" for d, _ in delays[-5:])
    )
    print(f"   not mailed within 120 s: {len(missing)}")
    # A notification a killed replica had claimed but not sent waits for its claim to expire
    # (notify.lease_s) before another replica sends it: that, not the partitions, is then
    # the largest delay. Told apart by its attempts (claimed twice).
    reclaimed = _claimed_again(url, set(during))
    if reclaimed:
        rest = [d for d, r in delays if r not in reclaimed]
        print(
            f"   claimed more than once (attempts > 1; after a SIGKILL, the killed replica's "
            f"claims, sent after notify.lease_s): {len(reclaimed)}, largest "
            f"{max(d for d, r in delays if r in reclaimed):.2f} s; largest delay of the "
            f"others {max(rest):.2f} s"
        )


def _claimed_again(url: str, runs: set[str]) -> set[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT run_id FROM notifications WHERE attempts > 1").fetchall()
    return {row[0] for row in rows} & runs


# -- 3. rule warm-up ------------------------------------------------------------------------

EXPERIMENTS = 50


def mixed_rules(count: int, rate: float) -> list[Rule]:
    """Like rules_eval.py's threshold mix for 60 %, then absence and duration rules."""
    rng = random.Random(3)
    thresholds = make_rules(count * 3 // 5, rate)
    rules: list[Rule] = list(thresholds)
    for i in range(count - len(thresholds)):
        when = {"experiment": f"exp{rng.randrange(EXPERIMENTS)}"}
        if i % 2 == 0:
            spec: dict[str, Any] = {
                "absence": {"limits": {"Running": "2h", "Queued": "30m"}, "every": "1m"}
            }
        else:
            spec = {"duration": {"factor": 3, "max": "6h", "baseline_runs": 20, "every": "1m"}}
        rules.append(
            Rule.model_validate({"name": f"s{i}", "when": when, "notify": ["oncall"], **spec})
        )
    return rules


def history(count: int, rate: float, now: datetime) -> Iterator[list[RunStatusEvent]]:
    """Runs that queue, run (around 10 minutes, per experiment) and end, `rate` events/s up
    to `now`: the ones that started last are still running."""
    rng = random.Random(9)
    start = now - timedelta(seconds=count / rate + 600)
    batch: list[RunStatusEvent] = []
    made = 0
    index = 0
    while made < count:
        at = start + timedelta(seconds=index * 3 / rate)
        if at > now:
            break
        experiment = index % EXPERIMENTS
        run = f"h{index}"
        common = {
            "RunId": run,
            "ExperimentName": f"exp{experiment}",
            "WorkspaceName": f"ws{index % 5}",
            "Tags": {"team": f"t{index % 7}"},
        }
        length = rng.lognormvariate(6.0 + experiment / 50, 0.4)
        steps = [
            (at, "Queued"),
            (at + timedelta(seconds=5), "Running"),
            (
                at + timedelta(seconds=5 + length),
                "Failed" if rng.random() < 0.15 else "Completed",
            ),
        ]
        for when, status in steps:
            if when <= now:
                batch.append(RunStatusEvent(TimeGenerated=when, Status=status, **common))
                made += 1
        if len(batch) >= 5000:
            yield batch
            batch = []
        index += 1
    if batch:
        yield batch


def _scheduler(store: Store, ruleset: RuleSet, clock: list[datetime]) -> Scheduler:
    return Scheduler(
        store,
        lambda: ruleset,
        HeldLease(),
        receiver_kinds={"oncall": "email"},
        clock=lambda: clock[0],
    )


def _first_tick(
    store: Store, ruleset: RuleSet, clock: list[datetime], profile: bool
) -> tuple[float, Scheduler, Any]:
    """A new replica's first tick (warm-up, then every rule evaluated), timed."""
    scheduler = _scheduler(store, ruleset, clock)
    profiler = cProfile.Profile() if profile else None
    began = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    cycle = scheduler.run_once()
    if profiler is not None:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())
    took = time.perf_counter() - began
    assert cycle.warmed_up and cycle.leader
    return took, scheduler, cycle


class _Timed:
    """Wall time spent in one function (the snapshot's part of a tick)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.seconds = owner, name, 0.0
        self.original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        setattr(owner, name, timed)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def bench_warmup(
    url: str, rules: int, events: int, rate: float, profile: bool, ticks: int = 30
) -> None:
    """Cold (no snapshot: first start, or every rule changed), then a holder's steady ticks
    (each after 10 s of new events; the snapshot's share of them), then restarts (a new
    replica's first tick after 10 s more events, loading the snapshot)."""
    store: Store = open_store(url, migrate=True)
    now = datetime.now(UTC).replace(microsecond=0)
    began = time.perf_counter()
    for batch in history(events, rate, now):
        store.write_batch(batch)
    filled = time.perf_counter() - began
    ruleset = RuleSet(mixed_rules(rules, rate))
    kinds = {
        kind: sum(r.kind == kind for r in ruleset.scheduled)
        for kind in ("threshold", "absence", "duration")
    }
    print(
        f"3. rule warm-up, {len(ruleset.scheduled)} scheduled rules {kinds}; history of "
        f"{events:,} events at {rate:g}/s ({events / rate / 3600:.1f} h), stored in {filled:.0f} s"
    )
    clock = [now]
    cold = []
    for attempt in range(3):
        with store.engine.begin() as conn:
            conn.execute(delete(rule_windows))
            conn.execute(delete(rule_feed))
        took, scheduler, cycle = _first_tick(store, ruleset, clock, profile and attempt == 0)
        cold.append(took)
        warm = scheduler.last_warm_up
        assert warm is not None and warm.loaded == 0
        if attempt == 0:
            evaluation = scheduler.evaluation
            assert evaluation is not None
            print(
                f"   no snapshot: {len(warm.replayed)} rules replayed from "
                f"{warm.replayed_events:,} events (each its own window and statuses); "
                f"{len(evaluation.runs.active)} active runs; first tick raised {cycle.alerts} "
                f"alerts"
            )
    print(f"   start -> rules evaluated, no snapshot: {_figures(cold)}")

    rng = random.Random(5)
    per_tick = int(rate * 10)
    holder = scheduler
    taken = _Timed(WindowSnapshots, "take")
    saved = _Timed(WindowSnapshots, "write")
    times = []
    try:
        for i in range(ticks):
            clock[0] += timedelta(seconds=10)
            store.write_batch(fresh_events(clock[0], per_tick, rng, i))
            began = time.perf_counter()
            cycle = holder.run_once()
            times.append(time.perf_counter() - began)
            assert cycle.events == per_tick, cycle
    finally:
        taken.restore()
        saved.restore()
    with store.engine.connect() as conn:
        rows = conn.execute(select(rule_windows.c.state)).scalars().all()
    share = (taken.seconds + saved.seconds) / len(times)
    print(
        f"   steady ticks ({ticks}, {per_tick} new events each): median "
        f"{statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; of which "
        f"the snapshot (take + write, budget {holder.snapshots.budget // 1024} KiB) "
        f"{share * 1000:.1f} ms per tick on average; {len(rows)} rows, "
        f"{sum(map(len, rows)) / 1024:.0f} KiB in all"
    )

    restarts = []
    for attempt in range(3):
        clock[0] += timedelta(seconds=10)
        store.write_batch(fresh_events(clock[0], per_tick, rng, ticks + attempt))
        took, scheduler, cycle = _first_tick(store, ruleset, clock, profile and attempt == 0)
        restarts.append(took)
        warm = scheduler.last_warm_up
        assert warm is not None and not warm.replayed, warm  # every row written by now
        if attempt == 0:
            print(
                f"   with the snapshot: {warm.loaded} window states loaded, "
                f"{warm.behind} events to catch up (from the oldest row's position); first "
                f"tick raised {cycle.alerts} alerts"
            )
    print(f"   start -> rules evaluated, from the snapshot: {_figures(restarts)} (goal < 1 s)")
    store.dispose()


def _figures(times: list[float]) -> str:
    listed = ", ".join(f"{t:.2f}" for t in times)
    return f"{listed} s (median {statistics.median(times):.2f} s)"


# -- main -----------------------------------------------------------------------------------


def parse_kafka(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["start", "rolling", "warmup"])
    parser.add_argument("--kill", action="store_true", help="rolling restart with SIGKILL")
    parser.add_argument("--static", action="store_true", help="group_instance_id per replica")
    parser.add_argument(
        "--assignment",
        choices=["group", "store"],
        default="group",
        help="kafka.assignment: the consumer group's rebalances, or leases in the store",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="failures/s while rolling")
    parser.add_argument("--kafka", nargs="*", default=[], help="kafka settings, key=value")
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--history", type=int, default=300_000, help="events in the store")
    parser.add_argument("--history-rate", type=float, default=20.0, help="their events/s")
    parser.add_argument("--profile", action="store_true", help="cProfile of the warm-up")
    parser.add_argument("--ticks", type=int, default=30, help="steady ticks between warm-ups")
    parser.add_argument("--sqlite", action="store_true", help="warm-up on SQLite, not PG")
    args = parser.parse_args()
    kafka = {"assignment": args.assignment, **parse_kafka(args.kafka)}
    print("(wall clock on a shared 2-core machine: broker, PostgreSQL, SMTP server, producer")
    print(" and every replica share the two cores with other work)")
    folder = Path(tempfile.mkdtemp(prefix="runwatch-restart-bench-"))
    if "warmup" in args.parts:
        if args.sqlite:
            bench_warmup(
                f"sqlite:///{folder / 'warm.db'}",
                args.rules,
                args.history,
                args.history_rate,
                args.profile,
                args.ticks,
            )
        else:
            with throwaway_pg() as url:
                bench_warmup(
                    url, args.rules, args.history, args.history_rate, args.profile, args.ticks
                )
    if not {"start", "rolling"} & set(args.parts):
        return 0
    ctx = multiprocessing.get_context("spawn")
    arrivals: Queue[Any] = ctx.Queue()
    smtp = free_port()
    catcher = ctx.Process(target=smtp_catcher, args=(smtp, arrivals), daemon=True)
    catcher.start()
    broker = EmbeddedBroker(log_path=folder / "tansu.log").start()
    try:
        if "start" in args.parts:
            with throwaway_pg() as url:
                migrate(url)
                bench_start(broker.bootstrap, folder / "start", url, smtp, arrivals, kafka)
        if "rolling" in args.parts:
            with throwaway_pg() as url:
                migrate(url)
                bench_rolling(
                    broker.bootstrap,
                    folder / "rolling",
                    url,
                    smtp,
                    arrivals,
                    kafka,
                    args.rate,
                    args.kill,
                    args.static,
                )
    finally:
        broker.stop()
        catcher.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
