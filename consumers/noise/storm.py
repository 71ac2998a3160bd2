"""Storm control: when one receiver would get more than `storm.max_per_minute` notifications
in one UTC minute, the excess is recorded as `storm` (not sent) and one summary notification
(kind `storm`) goes out at the end of that minute, listing how many and which. Grouped
alerts neither count nor are held back (grouping decides them before this stage): a group
already sends at most one digest per group_interval.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from consumers.model.notifications import NotificationState
from consumers.noise.decision import Candidate, Decision, StormWindow
from consumers.noise.state import NoiseState

STORM_RULE = "storm-control"  # the rule name a summary row carries


def window(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(second=0, microsecond=0)
    return start, start + timedelta(minutes=1)


class StormLimit:
    def __init__(self, max_per_minute: int) -> None:
        self._limit = max_per_minute

    def decide(self, candidate: Candidate, state: NoiseState, now: datetime) -> Decision | None:
        start, end = window(now)
        if state.live_count(candidate.receiver, start, self._limit) < self._limit:
            return None
        storm = StormWindow(candidate.receiver, candidate.receiver_kind, start, end)
        return Decision(NotificationState.STORM, "storm", storm=storm)
