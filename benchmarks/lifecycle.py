"""Client library (run lifecycle) benchmark: what a training script pays per call, and how
soon it reads its own change back from the store.

For RUNS runs, one after another: start_logging (one event, flushed to the broker), a tag
(one run-update record), complete; then the time until `get_status()` returns Completed
(publish -> consumer -> store -> read). Then one create_children(CHILDREN) call.

    python benchmarks/lifecycle.py [--runs 200] [--children 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from percentiles import pct  # benchmarks/, on the path when run as a script

from consumers.client import Experiment, Workspace
from consumers.config.settings import Settings
from consumers.demo.broker import EmbeddedBroker, create_topics
from consumers.service.app import Service


def report(label: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"  {label:28} p50 {statistics.median(ms):6.2f}  p95 {pct(ms, 0.95):6.2f}  "
        f"max {max(ms):6.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--children", type=int, default=1000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="runwatch-lifecycle-bench-"))
    broker = EmbeddedBroker().start()
    try:
        topic = f"runs-{uuid.uuid4().hex[:6]}"
        create_topics(broker.bootstrap, {topic: 3, f"{topic}-dead": 1})
        settings = Settings.model_validate(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap,
                    "topic": topic,
                    "dead_letter_topic": f"{topic}-dead",
                    "group_id": f"g-{uuid.uuid4().hex[:6]}",
                    "session_timeout_ms": 2000,
                    "heartbeat_interval_ms": 300,
                },
                "store": {"url": f"sqlite:///{folder / 'bench.db'}"},
                "metrics": {"enabled": False},
            }
        )
        service = Service(settings)
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,))
        thread.start()
        try:
            with Workspace("bench", settings, consistency_timeout=30) as ws:
                experiment = Experiment(ws, "bench")
                experiment.start_logging().get_status()  # warm up: group joined, store open
                starts, tags, completes, visible = [], [], [], []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    run = experiment.start_logging()
                    t1 = time.perf_counter()
                    run.tag("quality", "fantastic run")
                    t2 = time.perf_counter()
                    run.complete()
                    t3 = time.perf_counter()
                    assert run.get_status() == "Completed"
                    t4 = time.perf_counter()
                    starts.append(t1 - t0)
                    tags.append(t2 - t1)
                    completes.append(t3 - t2)
                    visible.append(t4 - t3)
                print(f"{args.runs} runs, one at a time (published = on the broker, acks=all):")
                report("start_logging", starts)
                report("tag", tags)
                report("complete", completes)
                report("complete -> get_status()", visible)
                parent = experiment.start_logging()
                t0 = time.perf_counter()
                kids = parent.create_children(args.children, tag_key="i")
                t1 = time.perf_counter()
                parent.get_children()
                t2 = time.perf_counter()
                print(
                    f"create_children({len(kids)}): published in {(t1 - t0) * 1000:.0f} ms, "
                    f"all stored and read back {(t2 - t1) * 1000:.0f} ms later"
                )
        finally:
            stop.set()
            thread.join(timeout=60)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
