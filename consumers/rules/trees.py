"""Run-tree roll-ups: a root's matching children (usually its failed steps) in one alert.

A tree is rolled up when its root ends, or `wait` after its first matching child if the root
is still going, whichever comes first; once per (rule, root). The alert is about the root
("3 of 12 steps failed: prep, train, eval") and lists each matching child in `details`.
Per-child and root-only rules (`mode: each | root`) are evaluated per event instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from consumers.model.events import RunStatusEvent
from consumers.rules.engine import Matcher
from consumers.rules.guard import RuleGuard
from consumers.rules.model import Rule
from consumers.rules.reads import Reads
from consumers.rules.tracker import RunTracker

_NAMES_IN_SUMMARY = 5

# What a roll-up reads of each child beyond its conditions: its name and its message.
READS = Reads(columns=frozenset({"Message"}), keys={"Tags": frozenset({"step"})})


def child_name(event: RunStatusEvent) -> str:
    return event.Tags.get("step") or event.RunType or event.RunId


def _detail(event: RunStatusEvent) -> dict[str, Any]:
    return {
        "run_id": event.RunId,
        "name": child_name(event),
        "status": event.Status,
        "time": event.TimeGenerated.isoformat(),
        "message": event.Message,
        "tags": dict(event.Tags),  # those the rules read (the tracker keeps no others)
    }


class Rollup:
    def __init__(self, rule: Rule, guard: RuleGuard) -> None:
        assert rule.tree is not None
        self.rule = rule
        self.wait = timedelta(seconds=rule.tree.wait)
        self.matcher = Matcher.compile(rule, guard=guard)

    def evaluate(
        self, runs: RunTracker, now: datetime
    ) -> list[tuple[str, RunStatusEvent, datetime, str, tuple[dict[str, Any], ...]]]:
        """(root id, the alert's event, the trigger time, summary, details) of each tree to
        roll up now."""
        name = self.rule.name
        out = []
        for root_id, tree in runs.trees.items():
            if name in tree.done:
                continue
            matching = [c for c in tree.children.values() if self.matcher.matches(c)]
            if not matching:
                continue
            first = min(c.TimeGenerated for c in matching)
            first = tree.first_match.setdefault(name, first)
            trigger = tree.ended if tree.ended is not None else first + self.wait
            if trigger > now:
                continue
            tree.done.add(name)
            matching.sort(key=lambda c: c.TimeGenerated)
            total = len(tree.children)
            statuses = sorted({c.Status for c in matching})
            verb = " / ".join(s.lower() for s in statuses)
            names = ", ".join(child_name(c) for c in matching[:_NAMES_IN_SUMMARY])
            more = len(matching) - _NAMES_IN_SUMMARY
            summary = f"{len(matching)} of {total} steps {verb} in {root_id}: {names}" + (
                f" and {more} more" if more > 0 else ""
            )
            event = tree.root or matching[0]
            out.append((root_id, event, trigger, summary, tuple(_detail(c) for c in matching)))
        return out


def evict_finished(runs: RunTracker, now: datetime, keep: timedelta) -> None:
    """Trees whose root ended more than `keep` ago (every roll-up rule has seen the end by
    then), and trees silent for `keep` x 100 whose root end never came, are forgotten."""
    silent = now - keep * 100
    for root_id in [
        r
        for r, t in runs.trees.items()
        if (t.ended is not None and t.ended + keep < now)
        or (t.ended is None and max(c.TimeGenerated for c in t.children.values()) < silent)
    ]:
        runs.forget_tree(root_id)
