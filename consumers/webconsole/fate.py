"""What became of a notification, in words: the state and its reason column read back as
"silenced by silence 3f2a...", "inhibited by rule cluster-down", "dead: 550 mailbox
unavailable". Pure: a Notification in, a Fate out."""

from __future__ import annotations

from dataclasses import dataclass

from consumers.model.notifications import Notification
from consumers.model.notifications import NotificationState as S


@dataclass(frozen=True, slots=True)
class Fate:
    summary: str  # one line
    detail: str | None = None  # the error text or the reason as stored
    silence_id: str | None = None  # for a link to the silence
    retryable: bool = False


def fate(n: Notification) -> Fate:
    reason = n.reason or ""
    kind, _, what = reason.partition(":")
    state = n.state
    if state is S.SENT:
        when = n.sent_at.strftime("%Y-%m-%d %H:%M:%S UTC") if n.sent_at else "?"
        tries = "attempt" if n.attempts == 1 else "attempts"
        return Fate(f"sent at {when} after {n.attempts} {tries}")
    if state is S.DEAD:
        return Fate(f"dead: {reason or 'gave up'}", n.last_error, retryable=True)
    if state is S.PENDING:
        if n.attempts:
            at = n.next_attempt_at.strftime("%H:%M:%S UTC")
            return Fate(f"retrying at {at} after {n.attempts} failed attempts", n.last_error)
        return Fate("waiting to be sent", retryable=False)
    if state is S.SENDING:
        return Fate("being sent now")
    if state is S.SILENCED and kind == "silence":
        return Fate(f"silenced by silence {what}", silence_id=what)
    if state is S.INHIBITED and kind == "inhibited":
        return Fate(f"inhibited by rule {what}")
    if state is S.MUTED and kind == "muted":
        return Fate(f"muted by time interval {what}")
    if state is S.MUTED and kind == "inactive":
        return Fate(f"outside its active time intervals ({what})")
    if state is S.REPEAT:
        return Fate("not repeated: its group was notified within repeat_interval")
    if state is S.STORM:
        return Fate("held back by storm control: counted in a storm summary instead")
    if state is S.THROTTLED:
        return Fate("throttled by its rule's throttle")
    if state is S.SUPPRESSED:
        return Fate("not sent: older than the replay horizon when it was recorded")
    return Fate(f"{state.value}", reason or None)
