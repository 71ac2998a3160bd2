"""Helpers for the rule-kind tests: events on an injected clock, rules from YAML text, a
scheduler over a real store, and what the outbox holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from consumers.model.events import RunStatusEvent
from consumers.rules.engine import RuleSet
from consumers.rules.model import Rule, RuleFile
from consumers.service.scheduler import Scheduler
from consumers.store import Store
from consumers.store.outbox import Notification, Outbox

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
KINDS = {"oncall": "email", "chat": "webhook"}


def event(minutes: float, run: str, status: str, **columns: Any) -> RunStatusEvent:
    columns.setdefault("ExperimentName", "train")
    columns.setdefault("WorkspaceName", "ws1")
    return RunStatusEvent.model_validate(
        {"TimeGenerated": T0 + timedelta(minutes=minutes), "RunId": run, "Status": status} | columns
    )


def rules(text: str) -> list[Rule]:
    return RuleFile.model_validate(yaml.safe_load(text)).rules


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, minutes: float) -> datetime:
        self.now = T0 + timedelta(minutes=minutes)
        return self.now


@dataclass
class SwitchLease:
    """A lease whose holder the test decides (the real one is tested with the store)."""

    held: bool = True
    acquired: int = field(default=0)
    released: int = field(default=0)

    def try_acquire(self) -> bool:
        if self.held:
            self.acquired += 1
        return self.held

    def release(self) -> None:
        self.released += 1


def scheduler(
    store: Store,
    text: str,
    clock: Clock,
    lease: Any = None,
    *,
    resolved: Sequence[str] = ("chat",),
    horizon_s: float | None = None,
) -> Scheduler:
    ruleset = RuleSet(rules(text))
    return Scheduler(
        store,
        lambda: ruleset,
        lease if lease is not None else SwitchLease(),
        receiver_kinds=KINDS,
        resolved_receivers=frozenset(resolved),
        horizon_s=horizon_s,
        clock=clock,
    )


def notes(store: Store, state: str | None = None) -> list[Notification]:
    """Oldest first (then by receiver: one cycle writes several at the same time)."""
    rows = Outbox(store).list(state=state, limit=1000)
    return sorted(rows, key=lambda n: (n.created_at, n.receiver))


def summaries(store: Store) -> list[tuple[str, str, str]]:
    """(receiver, alert status, summary) of every notification, oldest first."""
    return [(n.receiver, n.alert["status"], n.alert["summary"]) for n in notes(store)]
