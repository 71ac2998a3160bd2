"""The noise-control decisions for one ingest transaction, in Alertmanager's order:
routing (which receivers), then per receiver: inhibited, silenced, muted (time intervals),
then grouped (digest later, or `repeat`) or storm-limited. Every suppressed notification is
still a row (state `inhibited`, `silenced`, `muted`, `repeat` or `storm`, the reason naming
the silence, rule or interval) and counted in runwatch_notifications_suppressed_total.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

from prometheus_client import Counter
from sqlalchemy import Connection, exists, select

from consumers.alerts import Alert
from consumers.errors import ConfigError
from consumers.noise import grouping, storm
from consumers.noise.config import OWNER, NoiseSettings
from consumers.noise.decision import SUPPRESSED, Decision
from consumers.noise.inhibit import Inhibitor
from consumers.noise.matchers import alert_labels
from consumers.noise.routing import Router, Target
from consumers.noise.silences import active_silences, silenced_by
from consumers.noise.timeintervals import active
from consumers.store.schema import notifications as n

OWNER_PREFIX = f"{OWNER}:"


class _Kinds(Mapping[str, str]):
    """The configured receivers' kinds, plus `owner:<address>` (an email)."""

    def __init__(self, kinds: Mapping[str, str]) -> None:
        self._kinds = kinds

    def __getitem__(self, name: str) -> str:
        if name.startswith(OWNER_PREFIX) and len(name) > len(OWNER_PREFIX):
            return "email"
        return self._kinds[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            (name.startswith(OWNER_PREFIX) and len(name) > len(OWNER_PREFIX)) or name in self._kinds
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


class NoisePolicy:
    """Built once from the config; `begin` makes the per-transaction `Plan`."""

    def __init__(self, settings: NoiseSettings, suppressed: Counter | None = None) -> None:
        self.settings = settings
        self.router = Router(settings.route, settings.defaults)
        self.inhibitor = Inhibitor(settings.inhibit_rules)
        self._suppressed = suppressed

    def check_receivers(self, configured: set[str]) -> None:
        unknown = sorted(self.router.receivers() - configured - {OWNER})
        if unknown:
            raise ConfigError("noise.route", f"routes name unknown receivers: {unknown}")

    def begin(
        self, conn: Connection, alerts: Sequence[Alert], kinds: Mapping[str, str], now: datetime
    ) -> Plan:
        return Plan(self, conn, alerts, _Kinds(kinds), now)

    def count(self, state: str) -> None:
        if self._suppressed is not None and state in SUPPRESSED:
            self._suppressed.labels(reason=state).inc()


class Plan:
    def __init__(
        self,
        policy: NoisePolicy,
        conn: Connection,
        alerts: Sequence[Alert],
        kinds: _Kinds,
        now: datetime,
    ) -> None:
        self.policy = policy
        self.kinds = kinds
        self._conn = conn
        self._now = now
        self._labels = {id(alert): alert_labels(alert) for alert in alerts}
        self._silences = active_silences(conn, now)
        self._flushes: dict[str, datetime] = {}
        if policy.inhibitor:
            labelled = [(alert, self._labels[id(alert)]) for alert in alerts]
            policy.inhibitor.record(conn, labelled, now)

    def labels(self, alert: Alert) -> dict[str, str]:
        labels = self._labels.get(id(alert))
        if labels is None:
            labels = self._labels[id(alert)] = alert_labels(alert)
        return labels

    def targets(self, alert: Alert) -> list[tuple[str, Target]]:
        """(receiver name, options); `owner` becomes `owner:<address>`, or stays `owner`
        (recorded dead, unknown_receiver) when the run's user has no address."""
        out = []
        for target in self.policy.router.targets(alert.receivers, self.labels(alert)):
            name = target.receiver
            if name == OWNER:
                address = self.policy.settings.owners.address(alert.event.TriggeringUserName)
                name = OWNER_PREFIX + address if address else OWNER
            out.append((name, target))
        return out

    def decide(self, alert: Alert, receiver: str, target: Target, dedup_key: str) -> Decision:
        conn, now = self._conn, self._now
        labels = self.labels(alert)
        inhibitor = self.policy.inhibitor
        if inhibitor and (rule := inhibitor.inhibited_by(conn, alert, labels, now)) is not None:
            return Decision("inhibited", f"inhibited:{rule}")
        if (silence := silenced_by(self._silences, labels)) is not None:
            return Decision("silenced", f"silence:{silence}")
        intervals = self.policy.settings.time_intervals
        for name in target.mute:
            if active(intervals[name], now):
                return Decision("muted", f"muted:{name}")
        if target.active and not any(active(intervals[name], now) for name in target.active):
            return Decision("muted", "inactive:" + ",".join(target.active))
        values = grouping.group_labels(target, labels)
        if values is not None:
            if conn.execute(select(exists().where(n.c.dedup_key == dedup_key))).scalar():
                return Decision()  # a replay (the insert keeps the row): leave the group be
            key = grouping.group_key(target, receiver, values)
            if grouping.is_repeat(conn, key, alert.fingerprint, target.repeat_interval, now):
                return Decision("repeat", "repeat", group_key=key)
            due = self._flushes.get(key)
            if due is None:  # once per group and batch
                due = grouping.schedule(conn, key, receiver, target, values, now)
                self._flushes[key] = due
            return Decision(due=due, group_key=key)
        limit = self.policy.settings.storm.max_per_minute
        if limit is not None and storm.over_limit(conn, receiver, limit, now):
            storm.ensure_summary(conn, receiver, self.kinds[receiver], now)
            return Decision("storm", "storm")
        return Decision()
