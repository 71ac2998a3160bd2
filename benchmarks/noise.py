"""Noise-control cost on the ingest write path: alerts -> outbox rows in the ingest
transaction, without and with the noise policy (SQLite, one process, no dispatcher).

    python benchmarks/noise.py [--alerts 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from consumers.config.noise import NoiseSettings
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.noise.policy import NoisePolicy
from consumers.outbox.recorder import recording
from consumers.store import open_store
from consumers.store.silences import add_silence

KINDS = {"mail": "email", "hook": "webhook", "pager": "webhook"}
SETUPS: dict[str, dict[str, Any] | None] = {
    "no policy": None,
    "policy, nothing configured": {},
    "route + inhibition + 3 silences": {
        "route": {"routes": [{"matchers": ["severity=~0|1"], "receiver": "pager"}]},
        "inhibit_rules": [
            {
                "name": "ws",
                "source_matchers": ["scope=workspace"],
                "target_matchers": ["scope!=workspace"],
                "equal": ["workspace"],
            }
        ],
    },
    "grouping by workspace": {"defaults": {"group_by": ["workspace"]}},
    "storm limit 20/min": {"storm": {"max_per_minute": 20}},
}


def alerts(count: int, start: datetime) -> list[Alert]:
    out = []
    for i in range(count):
        event = RunStatusEvent.model_validate(
            {
                "TimeGenerated": start + timedelta(milliseconds=i),
                "RunId": f"run-{i}",
                "Status": "Failed",
                "ExperimentName": f"exp-{i % 50}",
                "WorkspaceName": f"ws-{i % 20}",
            }
        )
        out.append(
            Alert(
                rule="run-failed",
                severity=i % 4,
                receivers=("mail", "hook"),
                throttle_key=f"RunId={event.RunId}|Status=Failed",
                throttle_s=0,
                event=event,
            )
        )
    return out


def measure(name: str, noise: dict[str, Any] | None, count: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'bench.db'}", migrate=True)
        now = datetime.now(UTC)
        policy = None if noise is None else NoisePolicy(NoiseSettings.model_validate(noise))
        if name.endswith("silences"):
            for matcher in ("workspace=ws-x", "run_id=~nightly-.*", "experiment=never"):
                add_silence(store, [matcher], duration_s=3600, comment="", now=now)
        todo = alerts(count, now)

        def write(part: list[Alert]) -> int:
            events = [a.event for a in part]
            record = recording(part, KINDS, policy)
            return store.write_batch(events, record=record, now=now).notifications

        started = time.perf_counter()
        rows = sum(write(todo[i : i + batch]) for i in range(0, count, batch))
        elapsed = time.perf_counter() - started
        store.dispose()
    rate = rows / elapsed
    print(f"{name:34} {rows:7d} rows in {elapsed:6.2f} s  {rate:9.0f} rows/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alerts", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    for name, noise in SETUPS.items():
        measure(name, noise, args.alerts, args.batch)


if __name__ == "__main__":
    main()
