"""What noise control decided for one notification row (no store imports: the outbox uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Recorded, counted, never sent.
SUPPRESSED = ("inhibited", "silenced", "muted", "repeat", "storm")


@dataclass(frozen=True, slots=True)
class Decision:
    state: str = "pending"
    reason: str | None = None
    due: datetime | None = None  # a digest's flush time; None = now
    group_key: str | None = None
