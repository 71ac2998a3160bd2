"""What a rule raises: an alert about one event, to be sent to some receivers.

Alerts are values. The store turns each (alert, receiver) into one notification row under a
unique key derived from the rule and the event, so a Kafka replay cannot create a second one.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from consumers.model.events import RunStatusEvent

Severity = Annotated[int, Field(ge=0, le=4)]
SEVERITY_NAMES = {
    0: "Sev0 critical",
    1: "Sev1 error",
    2: "Sev2 warning",
    3: "Sev3 info",
    4: "Sev4 verbose",
}


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


class Alert(BaseModel):
    """One rule matching one event, or (stateful kinds: threshold, absence, flatline,
    duration, tree rollup) one firing or resolution of an alert instance. For those,
    `instance` names the episode (rule, group, start), `event` is the event that best
    explains it (the latest matching one, the stuck run's last event, the failed root's),
    and `summary` / `details` say what was found."""

    model_config = ConfigDict(frozen=True)

    rule: str
    severity: Severity = 3
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    receivers: tuple[str, ...]
    throttle_key: str  # e.g. "RunId=abc|Status=Failed": one notification per key per window
    throttle_s: float = 0.0
    event: RunStatusEvent
    kind: str = "event"
    status: Literal["firing", "resolved"] = "firing"
    instance: str | None = None
    summary: str = ""
    group: dict[str, str] = Field(default_factory=dict)
    value: float | None = None
    details: tuple[dict[str, Any], ...] = ()
    # Older than the replay horizon when raised: recorded as suppressed, never sent.
    stale: bool = False

    @property
    def fingerprint(self) -> str:
        """The alert's identity across events: its notifications thread under one subject."""
        return _digest(self.rule, self.throttle_key)

    def dedup_key(self, receiver: str) -> str:
        """Unique per (rule, event, receiver): the same event replayed maps to the same row.
        A stateful alert's key is its episode and status: one firing, one resolution."""
        if self.instance is not None:
            return _digest(self.rule, self.instance, self.status, receiver)
        run, time, status = self.event.natural_key
        return _digest(self.rule, run, time.isoformat(), status, receiver)

    def context(self) -> dict[str, Any]:
        """The alert's part of a template context."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "severity_name": SEVERITY_NAMES[self.severity],
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "fingerprint": self.fingerprint,
            "kind": self.kind,
            "instance": self.instance,
            "status": self.status,
            "summary": self.summary,
            "group": dict(self.group),
            "value": self.value,
            "details": [dict(d) for d in self.details],
        }
