"""Time intervals as a stage: a target's `mute_time_intervals` hold back its notifications
while any of them contains now (`muted:<name>`), its `active_time_intervals` while none does
(`inactive:<names>`). Muted alerts are not sent later. The intervals themselves are parsed
and evaluated in consumers/model/timeintervals.py."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from consumers.model.notifications import NotificationState
from consumers.model.timeintervals import TimeEntry, active
from consumers.noise.decision import Candidate, Decision
from consumers.noise.state import NoiseState


class Muting:
    def __init__(self, intervals: Mapping[str, tuple[TimeEntry, ...]]) -> None:
        self._intervals = intervals

    def decide(self, candidate: Candidate, state: NoiseState, now: datetime) -> Decision | None:
        target = candidate.target
        for name in target.mute:
            if active(self._intervals[name], now):
                return Decision(NotificationState.MUTED, f"muted:{name}")
        if target.active and not any(active(self._intervals[name], now) for name in target.active):
            return Decision(NotificationState.MUTED, "inactive:" + ",".join(target.active))
        return None
