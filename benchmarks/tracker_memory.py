"""Run tracker memory (issue 12, case 6): N Running runs whose tags hold one large value, under
an absence rule that reads one tag. Prints what the scheduled evaluation holds afterwards,
keeping whole events (the tracker before the bound) and cut-down ones (now), fed live
(event by event, as the scheduler's feed does) and warmed up from the store's runs table
(as a replica taking the evaluation lease does); then the cost per run of small runs, which
is what sizes `evaluation.max_tracked_runs`.

    python benchmarks/tracker_memory.py [--runs 200] [--tag-bytes 1000000]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from consumers.model.events import RunStatusEvent
from consumers.rules.evaluation import Evaluation
from consumers.rules.model import RuleFile
from consumers.rules.reads import Reads
from consumers.store import open_store
from consumers.store.feed import current_runs

RULES = """
rules:
  - name: stuck
    when: {where: "tags.team == 'vision'"}
    absence: {limits: {Running: 1h}}
    notify: [chat]
"""
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(i: int, tag_bytes: int) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "TimeGenerated": T0 + timedelta(seconds=i),
            "RunId": f"run-{i}",
            "Status": "Running",
            "ExperimentName": "train",
            "WorkspaceName": "ws",
            "Tags": {"team": "vision", "blob": f"{i:06d}" + "x" * tag_bytes},
        }
    )


def _evaluation(whole: bool) -> Evaluation:
    evaluation = Evaluation(RuleFile.model_validate(yaml.safe_load(RULES)).rules)
    if whole:
        evaluation.runs.keep = Reads(everything=True)  # what the tracker kept before
    return evaluation


def _held(feed: Callable[[Evaluation], None], whole: bool) -> tuple[float, float, int]:
    """MB the evaluation holds after `feed`, the peak on the way, and the runs tracked."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        evaluation = _evaluation(whole)
        feed(evaluation)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (held - before) / 1e6, (peak - before) / 1e6, len(evaluation.runs.active)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--tag-bytes", type=int, default=1_000_000)
    parser.add_argument("--small-runs", type=int, default=20_000)
    args = parser.parse_args()

    def live(evaluation: Evaluation) -> None:
        for i in range(args.runs):
            evaluation.observe(_event(i, args.tag_bytes))

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'runwatch.db'}", migrate=True)
        for i in range(args.runs):
            store.write_batch([_event(i, args.tag_bytes)])

        def warm_up(evaluation: Evaluation) -> None:
            for event, started in current_runs(store, None):
                evaluation.load_run(event, started)

        print(f"{args.runs} Running runs, tags of {args.tag_bytes / 1e6:g} MB, one absence rule")
        print(f"{'path':10} {'kept':14} {'runs':>6} {'MB held':>9} {'MB peak':>9}")
        for name, feed in (("live", live), ("warm-up", warm_up)):
            for whole in (True, False):
                mb, peak, runs = _held(feed, whole)
                kept = "whole events" if whole else "cut down"
                print(f"{name:10} {kept:14} {runs:>6} {mb:>9.1f} {peak:>9.1f}")
        store.dispose()

    def small(evaluation: Evaluation) -> None:
        for i in range(args.small_runs):
            evaluation.observe(_event(i, 0))

    mb, _, runs = _held(small, False)
    print(f"small runs: {runs} tracked, {mb * 1e6 / runs:.0f} bytes each (sizes the cap)")


if __name__ == "__main__":
    main()
