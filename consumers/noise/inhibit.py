"""Inhibition: an alert matching an inhibition rule's source matchers keeps, for `for`,
alerts matching its target matchers (with the same `equal` label values) from being sent;
they are recorded as `inhibited`. The classic use: one workspace-wide alert replaces the
per-run alerts of the same workspace. Sources are recorded in the store (table
`inhibitions`), so they hold across batches, restarts and replicas. An alert never
inhibits itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from consumers.alerts import Alert
from consumers.noise.config import InhibitRule
from consumers.noise.matchers import Matcher, match_all, parse_all
from consumers.noise.tables import inhibitions as t


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]
    for_s: float

    def key(self, labels: dict[str, str]) -> str:
        return "\x1f".join(labels.get(name, "") for name in self.equal)


class Inhibitor:
    def __init__(self, rules: tuple[InhibitRule, ...]) -> None:
        self._rules = tuple(
            _Rule(
                r.name, parse_all(r.source_matchers), parse_all(r.target_matchers), r.equal, r.for_
            )
            for r in rules
        )

    def __bool__(self) -> bool:
        return bool(self._rules)

    def record(
        self, conn: Connection, labelled: list[tuple[Alert, dict[str, str]]], now: datetime
    ) -> None:
        """Sources first, for the whole batch: a workspace alert inhibits the per-run alerts
        that arrived in the same batch too."""
        module = postgresql if conn.dialect.name == "postgresql" else sqlite
        for rule in self._rules:
            until = now + timedelta(seconds=rule.for_s)
            for alert, labels in labelled:
                if not match_all(rule.source, labels):
                    continue
                values = {
                    "name": rule.name,
                    "equal_key": rule.key(labels),
                    "fingerprint": alert.fingerprint,
                    "until": until,
                }
                statement = module.insert(t).values(**values)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["name", "equal_key"],
                        set_={"fingerprint": alert.fingerprint, "until": until},
                    )
                )

    def inhibited_by(
        self, conn: Connection, alert: Alert, labels: dict[str, str], now: datetime
    ) -> str | None:
        """The name of the first rule inhibiting `alert`, or None."""
        for rule in self._rules:
            if not match_all(rule.target, labels):
                continue
            source = conn.execute(
                select(t.c.fingerprint).where(
                    t.c.name == rule.name, t.c.equal_key == rule.key(labels), t.c.until > now
                )
            ).scalar()
            if source is not None and source != alert.fingerprint:
                return rule.name
        return None
