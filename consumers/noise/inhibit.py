"""Inhibition: an alert matching an inhibition rule's source matchers keeps, for `for`,
alerts matching its target matchers (with the same `equal` label values) from being sent;
they are recorded as `inhibited`. The classic use: one workspace-wide alert replaces the
per-run alerts of the same workspace. Sources go to the state port (the store's
`inhibitions` table), so they hold across batches, restarts and replicas. An alert never
inhibits itself, and only a firing alert is a source: a resolution starts no inhibition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from consumers.config.noise import InhibitRule
from consumers.model.alerts import Alert
from consumers.model.matchers import Matcher, match_all, parse_all
from consumers.model.notifications import NotificationState
from consumers.noise.decision import Candidate, Decision
from consumers.noise.state import NoiseState


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
        self, state: NoiseState, labelled: Sequence[tuple[Alert, dict[str, str]]], now: datetime
    ) -> None:
        """Sources first, for the whole batch: a workspace alert inhibits the per-run alerts
        that arrived in the same batch too."""
        for rule in self._rules:
            until = now + timedelta(seconds=rule.for_s)
            for alert, labels in labelled:
                if alert.status == "firing" and match_all(rule.source, labels):
                    state.record_inhibition(rule.name, rule.key(labels), alert.fingerprint, until)

    def check(
        self, state: NoiseState, fingerprint: str, labels: dict[str, str], now: datetime
    ) -> Decision | None:
        """`inhibited` by the first rule with a live source other than the alert itself."""
        for rule in self._rules:
            if not match_all(rule.target, labels):
                continue
            source = state.inhibition_source(rule.name, rule.key(labels), now)
            if source is not None and source != fingerprint:
                return Decision(NotificationState.INHIBITED, f"inhibited:{rule.name}")
        return None

    def decide(self, candidate: Candidate, state: NoiseState, now: datetime) -> Decision | None:
        return self.check(state, candidate.alert.fingerprint, candidate.labels, now)
