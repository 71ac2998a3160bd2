"""A silence: while `starts_at <= now < ends_at`, alerts whose labels match every matcher are
recorded `silenced` and not sent. Its matchers stay text here; noise control parses them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    silenced: int = 0  # notifications it kept from being sent

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at
