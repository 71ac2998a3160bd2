"""Noise control's decisions, in Alertmanager's order: routing (which receivers), then per
receiver the stages inhibition, silences, time intervals, grouping (a digest later, or
`repeat`) and storm control (ungrouped only); the first stage that decides wins. Every
suppressed notification is still a row (state `inhibited`, `silenced`, `muted`, `repeat` or
`storm`, the reason naming the silence, rule or interval) and counted in
runwatch_notifications_suppressed_total.

Pure: the stages read and write only the state port (consumers/noise/state.py), so the
ingest path, the scheduler and the dispatcher's re-check share one policy whatever holds the
state, and each stage is tested without a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

from prometheus_client import Counter

from consumers.config.noise import NoiseSettings
from consumers.model.alerts import Alert
from consumers.model.errors import ConfigError
from consumers.model.notifications import NOISE_SUPPRESSED
from consumers.model.receivers import OWNER
from consumers.noise.decision import Candidate, Decision
from consumers.noise.grouping import Grouper
from consumers.noise.inhibit import Inhibitor
from consumers.noise.matchers import alert_labels
from consumers.noise.muting import Muting
from consumers.noise.owners import resolve
from consumers.noise.routing import Router, Target
from consumers.noise.silences import Silencer
from consumers.noise.state import NoiseState
from consumers.noise.storm import StormLimit


class Stage(Protocol):
    def decide(self, candidate: Candidate, state: NoiseState, now: datetime) -> Decision | None:
        """A decision, or None to let the next stage decide."""
        ...


class Routed(NamedTuple):
    """One receiver an alert goes to: its name (`owner` resolved), the route's options, and
    whether it stands for an owner who is not mapped or allowed (the fallback, or `owner`)."""

    receiver: str
    target: Target
    unknown_owner: bool = False


class NoisePolicy:
    """Built once from the config; `begin` makes the per-batch `Plan`."""

    def __init__(
        self,
        settings: NoiseSettings,
        suppressed: Counter | None = None,
        *,
        unknown_owners: Counter | None = None,
    ) -> None:
        self.settings = settings
        self._unknown_owners = unknown_owners
        self.router = Router(settings.route, settings.defaults)
        self.inhibitor = Inhibitor(settings.inhibit_rules)
        self.muting = Muting(settings.time_intervals)
        limit = settings.storm.max_per_minute
        self.storm = None if limit is None else StormLimit(limit)
        self._suppressed = suppressed

    def check_receivers(self, configured: set[str]) -> None:
        unknown = sorted(self.router.receivers() - configured - {OWNER})
        if unknown:
            raise ConfigError("noise.route", f"routes name unknown receivers: {unknown}")
        fallback = self.settings.owners.fallback
        if fallback is not None and fallback not in configured:
            raise ConfigError("noise.owners.fallback", f"not a configured receiver: {fallback!r}")

    def begin(self, state: NoiseState, alerts: Sequence[Alert], now: datetime) -> Plan:
        return Plan(self, state, alerts, now)

    def count(self, state: str) -> None:
        if self._suppressed is not None and state in NOISE_SUPPRESSED:
            self._suppressed.labels(reason=state).inc()

    def count_unknown_owner(self, receiver: str) -> None:
        if self._unknown_owners is not None:
            outcome = "dead" if receiver == OWNER else "fallback"
            self._unknown_owners.labels(outcome=outcome).inc()

    def recheck(
        self, state: NoiseState, alerts: Sequence[Alert], now: datetime
    ) -> list[Decision | None]:
        """At send time, as Alertmanager does: per alert, a Decision when it is inhibited or
        silenced now (a silence added while its group waited), else None."""
        silencer = Silencer.load(state, now)
        out: list[Decision | None] = []
        for alert in alerts:
            labels = alert_labels(alert)
            decision = None
            if self.inhibitor:
                decision = self.inhibitor.check(state, alert.fingerprint, labels, now)
            if decision is None:
                decision = silencer.check(labels)
            out.append(decision)
        return out


class Plan:
    """One batch's decisions: inhibition sources recorded and silences read once, groups
    scheduled once."""

    def __init__(
        self, policy: NoisePolicy, state: NoiseState, alerts: Sequence[Alert], now: datetime
    ) -> None:
        self.policy = policy
        self._state = state
        self._now = now
        self._labels = {id(alert): alert_labels(alert) for alert in alerts}
        stages: list[Stage] = []
        if policy.inhibitor:
            labelled = [(alert, self._labels[id(alert)]) for alert in alerts]
            policy.inhibitor.record(state, labelled, now)
            stages.append(policy.inhibitor)
        silencer = Silencer.load(state, now)
        if silencer:
            stages.append(silencer)
        stages += [policy.muting, Grouper()]
        if policy.storm is not None:
            stages.append(policy.storm)
        self._stages = tuple(stages)

    def labels(self, alert: Alert) -> dict[str, str]:
        labels = self._labels.get(id(alert))
        if labels is None:
            labels = self._labels[id(alert)] = alert_labels(alert)
        return labels

    def targets(self, alert: Alert) -> list[Routed]:
        """`owner` becomes `owner:<address>` for a mapped or allowed user, else the owners'
        fallback receiver, else stays `owner` (recorded dead, unknown_owner)."""
        out = []
        for target in self.policy.router.targets(alert.receivers, self.labels(alert)):
            if target.receiver == OWNER:
                owner = resolve(self.policy.settings.owners, alert.event.TriggeringUserName)
                out.append(Routed(owner.receiver, target, owner.unknown))
            else:
                out.append(Routed(target.receiver, target))
        return out

    def decide(
        self, alert: Alert, receiver: str, receiver_kind: str, target: Target, dedup_key: str
    ) -> Decision:
        candidate = Candidate(alert, self.labels(alert), receiver, receiver_kind, target, dedup_key)
        for stage in self._stages:
            decision = stage.decide(candidate, self._state, self._now)
            if decision is not None:
                return decision
        return Decision()
