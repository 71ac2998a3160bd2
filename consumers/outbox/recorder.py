"""The recorder: one row per (alert, receiver), each with its state decided here in order --
stale (older than the replay horizon: `suppressed`), receiver not configured (`dead`,
`unknown_receiver`; `unknown_owner` for an owner not mapped or allowed, with no fallback),
within the rule's throttle (`throttled`), then noise control (consumers/noise) -- and marked
as a follow-up when an earlier row of the same alert fingerprint went to that receiver.

Row by row, in order, through the state port: a throttle or a follow-up can be decided by a
row recorded earlier in the same batch. The batch's candidates are named to the state first
(`prepare`), so that the ingest write's state (consumers/store/outbox_batch.py) loads what
the decisions read in one look-up per table and writes the rows set-based at the end of the
batch; the scheduler's state asks the database per row. A replayed batch inserts nothing
(the dedup key), so it is recorded exactly once whoever calls: the ingest write (per-event
rules) or the scheduler (the scheduled kinds).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection

from consumers.model.alerts import Alert
from consumers.model.notifications import NotificationState
from consumers.model.receivers import OWNER, owner_address
from consumers.noise.decision import Decision
from consumers.noise.policy import NoisePolicy, Plan
from consumers.noise.routing import Target
from consumers.outbox.rows import alert_row, storm_row
from consumers.outbox.state import OutboxState
from consumers.store.outbox_batch import BatchOutboxState
from consumers.store.writer import Recording

_STALE = Decision(NotificationState.SUPPRESSED, "stale")
_UNKNOWN = Decision(NotificationState.DEAD, "unknown_receiver")
_UNKNOWN_OWNER = Decision(NotificationState.DEAD, "unknown_owner")
_THROTTLED = Decision(NotificationState.THROTTLED, "throttled")
_PENDING = Decision()


class Recorder:
    """`receiver_kinds`: the configured receivers and their kinds (email, webhook);
    `noise`: the service's policy (None: each rule's receivers, nothing suppressed);
    `resolved_receivers`: those with send_resolved, the only ones a routed resolution
    goes to (a rule's own receivers are already chosen that way when it resolves)."""

    def __init__(
        self,
        receiver_kinds: Mapping[str, str],
        noise: NoisePolicy | None = None,
        *,
        resolved_receivers: Collection[str] = (),
    ) -> None:
        self._kinds = receiver_kinds
        self._noise = noise
        self._resolved = frozenset(resolved_receivers)

    def record(self, state: OutboxState, alerts: Sequence[Alert], now: datetime) -> int:
        """Rows written (a replay writes none)."""
        if not alerts:
            return 0
        plan = self._noise.begin(state, alerts, now) if self._noise is not None else None
        routed = [
            (alert, [(*t, alert.dedup_key(t[0])) for t in self._targets(plan, alert)])
            for alert in alerts
        ]
        throttled = [alert for alert in alerts if alert.throttle_s > 0 and not alert.stale]
        state.prepare(
            keys=[key for _, targets in routed for *_, key in targets],
            fingerprints={alert.fingerprint for alert in alerts},
            throttles={(alert.rule, alert.throttle_key) for alert in throttled},
            since=min((now - timedelta(seconds=a.throttle_s) for a in throttled), default=None),
        )
        created = 0
        for alert, targets in routed:
            alert_json = alert.model_dump(mode="json")
            for receiver, target, unknown_owner, key in targets:
                kind = self.kind(receiver)
                decision = self._decide(state, plan, alert, receiver, kind, target, key, now)
                followup = state.is_followup(alert.fingerprint, receiver, key)
                row = alert_row(alert, alert_json, receiver, kind, key, decision, followup, now)
                if state.insert(row):
                    # only a new row can open a storm window's summary: a replayed batch's
                    # duplicates would otherwise add one for a window the first pass spared
                    if decision.storm is not None:
                        state.insert(storm_row(decision.storm, now))
                    created += 1
                    if self._noise is not None:
                        self._noise.count(decision.state)
                        if unknown_owner:
                            self._noise.count_unknown_owner(receiver)
        return created

    def kind(self, receiver: str) -> str | None:
        """email or webhook; None for a receiver not configured."""
        if owner_address(receiver) is not None:
            return "email"
        return self._kinds.get(receiver)

    def _targets(self, plan: Plan | None, alert: Alert) -> list[tuple[str, Target | None, bool]]:
        """(receiver, route options, an unknown owner's stand-in)."""
        if plan is None:
            return [(receiver, None, False) for receiver in alert.receivers]
        targets = plan.targets(alert)
        if alert.status == "resolved":
            chosen = set(alert.receivers) | self._resolved
            targets = [routed for routed in targets if routed.target.receiver in chosen]
        return [(r.receiver, r.target, r.unknown_owner) for r in targets]

    def _decide(
        self,
        state: OutboxState,
        plan: Plan | None,
        alert: Alert,
        receiver: str,
        kind: str | None,
        target: Target | None,
        key: str,
        now: datetime,
    ) -> Decision:
        if alert.stale:
            return _STALE
        if kind is None:
            return _UNKNOWN_OWNER if receiver == OWNER else _UNKNOWN
        if alert.throttle_s > 0:
            since = now - timedelta(seconds=alert.throttle_s)
            if state.is_throttled(alert.rule, alert.throttle_key, receiver, key, since):
                return _THROTTLED
        if plan is None or target is None:
            return _PENDING
        return plan.decide(alert, receiver, kind, target, key)


def recording(
    alerts: Sequence[Alert],
    receiver_kinds: Mapping[str, str],
    noise: NoisePolicy | None = None,
) -> Recording | None:
    """The recorder as the store's write transaction runs it (`Store.write_batch(record=)`):
    the ingest path's alerts go through the same recorder, with the same noise policy, as
    the scheduler's. None when there is nothing to record."""
    if not alerts:
        return None
    recorder = Recorder(receiver_kinds, noise)

    def record(conn: Connection, now: datetime) -> int:
        state = BatchOutboxState(conn)
        recorder.record(state, alerts, now)
        return state.flush()  # the rows, set-based, in the batch's transaction

    return record
