"""What `runwatch run exec` adds to a command: to its start, and to its whole run.

Start: from spawning until the command runs, measured by the command itself announcing it
on a FIFO (`sh -c 'echo > FIFO'`), run directly and as `runwatch run exec -- sh -c ...`,
interleaved, RUNS times each. Publishing Queued and Running happens on exec's courier
thread once the command runs, so it is not in this figure. Whole run: `true` and `runwatch
run exec -- true` until they exit (exec: the courier loads the settings and kafka-python,
connects, and delivers Queued, Running and Completed to the bundled broker before exiting).

    python benchmarks/exec_overhead.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from percentiles import pct  # benchmarks/, on the path when run as a script

from consumers.demo.broker import EmbeddedBroker, create_topics

RUNWATCH = str(Path(sys.executable).parent / "runwatch")


def started_after(argv: list[str], fifo: Path, env: dict[str, str]) -> tuple[float, float]:
    """Seconds until the command wrote to the FIFO, and until its process exited."""
    began = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    with fifo.open() as handle:
        handle.read()
    started = time.perf_counter() - began
    process.wait()
    return started, time.perf_counter() - began


def ran_for(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def report(label: str, seconds: list[float]) -> tuple[float, float]:
    ms = [s * 1000 for s in seconds]
    p50, p90 = statistics.median(ms), pct(ms, 0.90)
    print(f"  {label:34} p50 {p50:7.1f}  p90 {p90:7.1f}  max {max(ms):7.1f} ms")
    return p50, p90


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="runwatch-exec-bench-"))
    fifo = folder / "started"
    os.mkfifo(fifo)
    broker = EmbeddedBroker(log_path=folder / "broker.log").start()
    try:
        topic = f"runs-{uuid.uuid4().hex[:6]}"
        create_topics(broker.bootstrap, {topic: 3})
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
        env |= {
            "RUNWATCH_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "RUNWATCH_KAFKA__TOPIC": topic,
            "RUNWATCH_STORE__URL": f"sqlite:///{folder / 'unused.db'}",
            "RUNWATCH_SPOOL_DIR": str(folder / "spool"),
        }
        probe = ["sh", "-c", f"echo > {fifo}"]
        wrap = [RUNWATCH, "run", "exec", "--experiment", "bench", "--"]
        direct_start, exec_start, direct_all, exec_all = [], [], [], []
        ran_for([*wrap, "true"], env)  # warm the page cache and the broker's topic metadata
        for _ in range(args.runs):
            direct_start.append(started_after(probe, fifo, env)[0])
            exec_start.append(started_after([*wrap, *probe], fifo, env)[0])
            direct_all.append(ran_for(["true"], env))
            exec_all.append(ran_for([*wrap, "true"], env))
        print(f"runwatch run exec overhead, {args.runs} runs each ({os.cpu_count()} cores)")
        print("until the command starts:")
        d50, d90 = report("sh -c 'echo > fifo'", direct_start)
        e50, e90 = report("runwatch run exec -- sh -c ...", exec_start)
        print(f"  added: p50 {e50 - d50:.1f} ms, p90 {e90 - d90:.1f} ms")
        print("until it exits (exec delivers Queued, Running, Completed first):")
        d50, d90 = report("true", direct_all)
        e50, e90 = report("runwatch run exec -- true", exec_all)
        print(f"  added: p50 {e50 - d50:.1f} ms, p90 {e90 - d90:.1f} ms")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
