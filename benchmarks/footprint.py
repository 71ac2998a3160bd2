"""Footprint benchmark: the resident memory of `runwatch serve` at a steady event rate.

`runwatch serve` runs as its own process (the installed entry point, as deployed) against the
bundled broker, with the shipped alert_rules, its metrics port on, a real SMTP server
(aiosmtpd) for `ml-oncall` and a real webhook endpoint (aiohttp) for `chat`, each in its own
process. A producer process sends RATE events/s for SECONDS: runs going Queued -> Running ->
Completed, every FAIL_EVERY-th run Failed instead (mails and webhooks go out all along). The
serve process's VmRSS is sampled every second; printed: the median of the last half of the
steady phase, VmHWM (the peak) and the number of mails. Once on SQLite, then on PostgreSQL
(a throwaway database at 127.0.0.1:5432, skipped when it does not answer). The store is
migrated by `runwatch db upgrade` before serve starts (a restart or a deploy without a new
migration); --fresh leaves it empty, so serve migrates it at start (a first start).

In the same run, when installed, a Prometheus scrapes serve's /metrics every second with the
shipped runwatch-alerts.yml plus a rule firing on Failed events, and hands its alerts to an
Alertmanager that mails the same SMTP server: the pair the issue compares runwatch with.
Their RSS is sampled the same way.

    python benchmarks/footprint.py [--rate 200] [--seconds 60] [--store sqlite,postgresql]
        [--env MALLOC_ARENA_MAX=2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import yaml
from alerting import start_catchers, stop_catchers  # benchmarks/, on the path when run as a script

from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from consumers.model.events import RunStatusEvent

ROOT = Path(__file__).resolve().parent.parent
RUNWATCH = str(Path(sys.executable).parent / "runwatch")
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
FIRST_START = " (first start: serve migrates the empty store)"
STEPS = ("Queued", "Running", "Running", "Running", "Running")

FAILED_RULE = {
    "groups": [
        {
            "name": "bench-failed",
            "rules": [
                {
                    "alert": "RunFailed",
                    "expr": 'increase(runwatch_events_total{status="Failed"}[15s]) > 0',
                    "labels": {"severity": "error"},
                    "annotations": {"summary": "A run failed."},
                }
            ],
        }
    ]
}


def vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in kB (0 once the process is gone)."""
    with suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def producer(bootstrap: str, topic: str, rate: float, seconds: float, fail_every: int) -> None:
    """Runs of len(STEPS) + 1 events each, interleaved, at a steady rate."""
    from kafka import KafkaProducer

    kafka = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    per_run = len(STEPS) + 1
    in_flight = 50  # runs interleaved at any time
    begin = time.perf_counter()
    for index in range(int(rate * seconds)):
        due = begin + index / rate
        while (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        batch, slot = divmod(index, in_flight * per_run)
        run_number = batch * in_flight + slot % in_flight
        step = slot // in_flight
        if step < len(STEPS):
            status = STEPS[step]
        else:
            status = "Failed" if run_number % fail_every == 0 else "Completed"
        run = f"fp-{run_number}"
        event = RunStatusEvent(
            TimeGenerated=datetime.now(UTC),
            RunId=run,
            Status=status,
            ExperimentName=f"exp-{run_number % 7}",
            WorkspaceName="bench",
            Message="CUDA out of memory" if status == "Failed" else None,
        )
        kafka.send(topic, key=run.encode(), value=event.to_json())
    kafka.flush()
    kafka.close()


@contextmanager
def throwaway_pg() -> Iterator[str | None]:
    try:
        import psycopg
        from psycopg import sql

        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as exc:
        print(f"  PostgreSQL not reachable at {PG_ADMIN}: {exc}")
        yield None
        return
    name = f"runwatch_fp_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres@127.0.0.1/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def serve_config(
    folder: Path, bootstrap: str, topic: str, store: str, smtp: int, http: int, metrics: int
) -> Path:
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"fp-{topic}"},
        "store": {"url": store},
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics}"},
        "smtp": {"host": "127.0.0.1", "port": smtp},
        "receivers": {
            "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
            "chat": {"webhook": {"url": f"http://127.0.0.1:{http}/hook"}},
        },
        "logging": {"level": "WARNING"},
    }
    path = folder / "runwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Sidecar:
    """Prometheus or Alertmanager, launched directly with its own config, storage and port."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self._log = log.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def start_pair(folder: Path, target: str, smtp: int) -> list[tuple[str, Sidecar]]:
    """An Alertmanager mailing the SMTP server, and a Prometheus scraping `target`."""
    if PROMETHEUS is None or ALERTMANAGER is None:
        print("  prometheus / prometheus-alertmanager not installed: no side-by-side figure")
        return []
    am_port, prom_port = free_port(), free_port()
    am_config = {
        "global": {
            "smtp_smarthost": f"127.0.0.1:{smtp}",
            "smtp_from": "alertmanager@localhost",
            "smtp_require_tls": False,
        },
        "route": {"receiver": "mail", "group_wait": "0s", "group_interval": "1s"},
        "receivers": [{"name": "mail", "email_configs": [{"to": "oncall@example.com"}]}],
    }
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    alertmanager = Sidecar(
        [
            ALERTMANAGER,
            f"--config.file={folder / 'alertmanager.yml'}",
            f"--storage.path={folder / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        folder / "alertmanager.log",
    )
    (folder / "failed.yml").write_text(yaml.safe_dump(FAILED_RULE))
    prom_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [
            str(ROOT / "deploy" / "prometheus" / "runwatch-alerts.yml"),
            str(folder / "failed.yml"),
        ],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [{"job_name": "runwatch", "static_configs": [{"targets": [target]}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    prometheus = Sidecar(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        folder / "prometheus.log",
    )
    return [("alertmanager", alertmanager), ("prometheus", prometheus)]


def sample(pids: dict[str, int], stop: threading.Event, into: dict[str, list[int]]) -> None:
    while not stop.wait(1.0):
        for name, pid in pids.items():
            into.setdefault(name, []).append(vm(pid, "VmRSS"))


def print_probe(path: Path) -> None:
    """The breakdown rss_probe.py wrote after start-up and under load."""
    reports = [json.loads(line) for line in path.read_text().splitlines()]
    keys = ("Rss", "Anonymous", "Pss_Anon", "Pss_File", "Private_Clean", "Shared_Clean")
    for when, report in zip(("after start-up", "under load"), reports, strict=False):
        rollup = report["smaps"]["rollup"]
        names = sorted({t["name"].split("_")[0].rstrip("-0123456789") for t in report["threads"]})
        print(
            f"  probe {when}: "
            + ", ".join(f"{k} {rollup.get(k, 0) / 1024:.1f}" for k in keys)
            + f" MB; {len(report['threads'])} threads ({', '.join(names)})"
        )
        if report.get("sqlite"):
            lite = report["sqlite"]
            print(
                f"    SQLite's own memory {lite['used_kb'] / 1024:.1f} MB "
                f"(peak {lite['high_kb'] / 1024:.1f})"
            )
        if report.get("caches"):
            entries = ", ".join(f"{k} {v}" for k, v in report["caches"].items())
            print(f"    cache entries: {entries}")
        files = report["smaps"]["files"][:8]
        print("    file-backed: " + ", ".join(f"{n} {kb / 1024:.1f}" for n, kb in files))
        if "trimmed_kb" in report:
            print(f"    malloc_trim(0) would give back {report['trimmed_kb'] / 1024:.1f} MB")
        stacks, stack_kb = report["smaps"]["stacks"]
        print(
            f"    {stacks} thread stacks hold {stack_kb / 1024:.2f} MB; "
            f"{report['smaps']['arenas']} malloc arenas besides the main heap; "
            f"{report['smaps']['anon_count']} anonymous mappings"
        )
        anon = report["smaps"]["anon"][:12]
        print(
            "    anonymous (rss/size MB): "
            + ", ".join(f"{w} {r / 1024:.1f}/{s / 1024:.1f}" for r, s, w in anon)
        )
        if "traced_kb" in report:
            print(f"    tracemalloc live {report['traced_kb'] / 1024:.1f} MB; top files:")
            for where, kb in report["top"][:12]:
                print(f"      {kb / 1024:6.2f} MB {where}")
        for where, kb, count in report.get("growth", [])[:15]:
            print(f"      grew {kb / 1024:+6.2f} MB ({count:+d} blocks) {where}")
    for thread in reports[-1]["threads"] if reports else []:
        print(f"    thread {thread['name']}: {' < '.join(thread['stack'][:3])}")


def one_store(
    label: str,
    store: str,
    bootstrap: str,
    smtp: int,
    http: int,
    arrivals: Queue[Any],
    args: argparse.Namespace,
) -> dict[str, tuple[float, float]]:
    """{process: (steady RSS MB, peak RSS MB)} for one serve run."""
    folder = Path(tempfile.mkdtemp(prefix="runwatch-footprint-"))
    topic = f"fp-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: 4})
    metrics = free_port()
    config = serve_config(folder, bootstrap, topic, store, smtp, http, metrics)
    env = dict(os.environ, **dict(item.split("=", 1) for item in args.env))
    if not args.fresh:  # the documented deploy step: migrate, then start the new version
        subprocess.run([RUNWATCH, "db", "upgrade", "--store", store], check=True, env=env)
    log = (folder / "serve.log").open("wb")
    argv = [RUNWATCH, "serve", "--config", str(config)]
    probe = folder / "probe.jsonl"
    if args.probe or args.trace:  # the same command, with a SIGUSR1 report (rss_probe.py)
        wrap = [sys.executable, str(ROOT / "benchmarks" / "rss_probe.py"), str(probe)]
        argv = [*wrap, *(["--trace"] if args.trace else []), "--", *argv[1:]]
    serve = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    sidecars = start_pair(folder, f"127.0.0.1:{metrics}", smtp) if args.pair else []
    pids = {"serve": serve.pid} | {name: car.process.pid for name, car in sidecars}
    samples: dict[str, list[int]] = {}
    try:
        time.sleep(args.warmup)  # start-up, group join, migrations
        if serve.poll() is not None:
            raise SystemExit(f"serve exited with {serve.returncode}; see {folder / 'serve.log'}")
        start_rss = vm(serve.pid, "VmRSS")
        if args.probe or args.trace:
            serve.send_signal(signal.SIGUSR1)
        while not arrivals.empty():
            arrivals.get()
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=producer, args=(bootstrap, topic, args.rate, args.seconds, args.fail_every)
        )
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(pids, stop, samples), daemon=True)
        proc.start()
        sampler.start()
        mails = hooks = 0
        last = time.monotonic()
        probed = not (args.probe or args.trace)
        steady_at = time.monotonic() + args.seconds * 0.9
        while proc.is_alive() or time.monotonic() - last < 3:
            # until the producer is done and nothing arrived for 3 s: the last mails
            if proc.is_alive():
                last = time.monotonic()
            if not probed and time.monotonic() >= steady_at:
                serve.send_signal(signal.SIGUSR1)  # still under load
                probed = True
            try:
                kind = arrivals.get(timeout=0.2)[0]
            except Exception:
                continue
            last = time.monotonic()
            mails += kind == "mail"
            hooks += kind == "hook"
        proc.join()
        stop.set()
        sampler.join()
        if serve.poll() is not None:
            raise SystemExit(f"serve exited with {serve.returncode}; see {folder / 'serve.log'}")
        hwm = vm(serve.pid, "VmHWM")
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        log.close()
        for _, car in sidecars:
            car.stop()
    figures: dict[str, tuple[float, float]] = {}
    for name, values in samples.items():
        steady = values[len(values) // 2 :]
        figures[name] = (statistics.median(steady) / 1024, max(values) / 1024)
    figures["serve"] = (figures["serve"][0], hwm / 1024)
    load = os.getloadavg()
    print(
        f"{label}{FIRST_START if args.fresh else ''}: {args.rate:.0f} events/s for "
        f"{args.seconds:.0f}s, {mails} mails and {hooks} webhooks received (all senders); "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"  serve after start-up, before events: {start_rss / 1024:.1f} MB")
    for name, (steady_mb, peak_mb) in figures.items():
        print(f"  {name:<13} steady RSS {steady_mb:6.1f} MB   peak {peak_mb:6.1f} MB")
    if "prometheus" in figures and "alertmanager" in figures:
        pair = figures["prometheus"][0] + figures["alertmanager"][0]
        print(
            f"  Prometheus + Alertmanager together {pair:.1f} MB; "
            f"serve / pair {figures['serve'][0] / pair:.2f} (goal: serve < 80 MB)"
        )
    if probe.exists():
        print_probe(probe)
    if args.keep:
        print(f"  kept {folder} (serve.log, configs)")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=6, help="seconds before producing")
    parser.add_argument("--fail-every", type=int, default=10, help="every Nth run fails")
    parser.add_argument("--store", default="sqlite,postgresql")
    parser.add_argument("--no-pair", dest="pair", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep serve's folder and log")
    parser.add_argument(
        "--fresh", action="store_true", help="serve migrates an empty store itself (first start)"
    )
    parser.add_argument("--probe", action="store_true", help="smaps/threads breakdown")
    parser.add_argument("--trace", action="store_true", help="--probe plus tracemalloc")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for serve (MALLOC_ARENA_MAX=2)"
    )
    args = parser.parse_args()
    arrivals, smtp, http, servers = start_catchers()
    broker = EmbeddedBroker().start()
    try:
        for store in args.store.split(","):
            if store == "sqlite":
                folder = Path(tempfile.mkdtemp(prefix="runwatch-footprint-db-"))
                url = f"sqlite:///{folder / 'runwatch.db'}"
                one_store("SQLite", url, broker.bootstrap, smtp, http, arrivals, args)
                shutil.rmtree(folder, ignore_errors=True)
            elif store == "postgresql":
                with throwaway_pg() as pg:
                    if pg is not None:
                        one_store("PostgreSQL", pg, broker.bootstrap, smtp, http, arrivals, args)
            else:
                parser.error(f"--store: sqlite or postgresql, not {store!r}")
    finally:
        broker.stop()
        stop_catchers(servers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
