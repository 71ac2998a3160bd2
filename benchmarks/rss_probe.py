"""Runs `runwatch ...` in this process with a SIGUSR1 handler that writes where its memory is.

    python benchmarks/rss_probe.py OUT_FILE [--trace] -- serve --config runwatch.yaml

Each SIGUSR1 appends one JSON line to OUT_FILE: /proc/self/smaps_rollup (anonymous vs
file-backed), the [heap] and anonymous mappings by size, the threads (name, native id,
innermost frames), gc counts, and with --trace (tracemalloc from the first line on, 1 frame)
the growth since the previous SIGUSR1 by file and the live total. Used by
benchmarks/footprint.py --probe; tracemalloc's own overhead makes those runs' RSS figures
higher, so the RSS figures quoted come from runs without --trace.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
import weakref
from pathlib import Path
from types import FrameType
from typing import Any


def smaps() -> dict[str, Any]:
    """The rollup, and the anonymous mappings (heap, arenas, thread stacks) by kind."""
    rollup = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        rollup[key] = int(value.split()[0])
    by_file: dict[str, int] = {}
    anon: list[tuple[int, int, str]] = []  # (rss kB, size kB, what)
    current = ""
    perms = ""
    size = 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            current = head[5] if len(head) > 5 else "[anon]"
            perms = head[1]
            low, high = (int(x, 16) for x in head[0].split("-"))
            size = (high - low) // 1024
        elif head[0] == "Rss:":
            rss = int(head[1])
            if current.startswith("/"):
                name = Path(current).name
                by_file[name] = by_file.get(name, 0) + rss
            else:
                anon.append((rss, size, f"{current} {perms}"))
    anon.sort(reverse=True)
    files = sorted(by_file.items(), key=lambda kv: -kv[1])
    # 8 MB (the default ulimit -s): a thread's stack; the reserved rest of a malloc arena's
    # 64 MB heap shows as an inaccessible (---p) mapping after its used part
    stacks = [a for a in anon if 8180 <= a[1] <= 8196 and a[2].endswith("rw-p")]
    arenas = [a for a in anon if a[2].endswith("---p") and a[1] > 1024]
    return {
        "rollup": rollup,
        "files": files[:25],
        "anon": anon[:40],
        "anon_count": len(anon),
        "stacks": [len(stacks), sum(a[0] for a in stacks)],
        "arenas": len(arenas),
    }


def sqlite_memory() -> dict[str, int]:
    """SQLite's own allocations: page caches, schemas, prepared statements."""
    if "_sqlite3" not in sys.modules:
        return {}
    lib = ctypes.CDLL(sys.modules["_sqlite3"].__file__)  # resolves the libsqlite3 it links
    current, high = ctypes.c_int64(), ctypes.c_int64()
    lib.sqlite3_status64(0, ctypes.byref(current), ctypes.byref(high), 0)  # MEMORY_USED
    return {"used_kb": current.value // 1024, "high_kb": high.value // 1024}


ENGINES: weakref.WeakSet[Any] = weakref.WeakSet()  # seen through SQLAlchemy's public events


def caches() -> dict[str, int]:
    """What grows with use: SQLAlchemy's compiled statements and pooled connections per
    engine (gc.get_objects() cannot see them: serve freezes its start-up objects)."""
    found = {"sqlalchemy_compiled": 0, "pooled_connections": 0}
    for engine in list(ENGINES):
        found["sqlalchemy_compiled"] += len(engine._compiled_cache or ())
        found["pooled_connections"] += engine.pool.checkedin() + engine.pool.checkedout()
    return found


def threads() -> list[dict[str, Any]]:
    frames = sys._current_frames()
    out = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or 0)
        stack: list[str] = []
        while frame is not None and len(stack) < 4:
            stack.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
            frame = frame.f_back
        out.append({"name": thread.name, "native": thread.native_id, "stack": stack})
    return out


class Probe:
    def __init__(self, out: Path, trace: bool) -> None:
        self.out = out
        self.trace = trace
        self.last: tracemalloc.Snapshot | None = None
        if trace:
            tracemalloc.start(1)

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        report: dict[str, Any] = {
            "at": time.time(),
            "smaps": smaps(),
            "threads": threads(),
            "gc": {"counts": gc.get_count(), "frozen": gc.get_freeze_count()},
            "modules": sorted(sys.modules),
            "sqlite": sqlite_memory(),
            "caches": caches(),
        }
        if self.trace:
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            report["traced_kb"] = sum(s.size for s in snap.statistics("filename")) // 1024
            by_file = snap.statistics("filename")
            report["top"] = [(str(s.traceback), s.size // 1024) for s in by_file[:30]]
            if self.last is not None:
                diff = snap.compare_to(self.last, "lineno")
                report["growth"] = [
                    (str(d.traceback), d.size_diff // 1024, d.count_diff) for d in diff[:60]
                ]
            self.last = snap
        if os.environ.get("RSS_PROBE_TRIM"):  # what glibc would give back: measured, not kept
            before = smaps()["rollup"]["Rss"]
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            report["trimmed_kb"] = before - smaps()["rollup"]["Rss"]
        with self.out.open("a") as out:
            out.write(json.dumps(report) + "\n")


def main() -> int:
    out = Path(sys.argv[1])
    rest = sys.argv[2:]
    trace = "--trace" in rest[: rest.index("--")]
    signal.signal(signal.SIGUSR1, Probe(out, trace))
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "engine_connect", lambda conn: ENGINES.add(conn.engine))
    from consumers.entry import main as runwatch

    return runwatch(rest[rest.index("--") + 1 :])


if __name__ == "__main__":
    sys.exit(main())
