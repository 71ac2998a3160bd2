"""Named time intervals (Alertmanager's `time_intervals`), evaluated in their own time zone.

An interval is a list of entries; it contains an instant when any entry does. An entry holds
when every field it gives holds: `times` (HH:MM, start inclusive, end exclusive, end may be
24:00), `weekdays`, `days_of_month` (negative counts from the month's end), `months`, `years`;
ranges are written `monday:friday`, `1:7`, `january:march`. `location` is an IANA zone name
(default UTC), so "09:00-17:00 Europe/Berlin" follows daylight saving time.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

_WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}  # monday = 0
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_CLOCK = re.compile(r"^(\d{2}):(\d{2})$")


def _minutes(text: str) -> int:
    found = _CLOCK.match(text)
    if found is None:
        raise ValueError(f"expected HH:MM, got {text!r}")
    hours, minutes = int(found[1]), int(found[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"expected a time between 00:00 and 24:00, got {text!r}")
    return hours * 60 + minutes


def _ranges(names: dict[str, int] | None, low: int, high: int) -> Callable[[Any], Any]:
    """["monday:friday", "sunday"] -> ((0, 4), (6, 6)); numbers or names."""

    def value(text: str) -> int:
        text = text.strip().lower()
        if names is not None and text in names:
            return names[text]
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"unknown value {text!r}") from None
        if not (low <= number <= high or (low == 1 and -31 <= number <= -1)):
            raise ValueError(f"{number} is out of range {low}..{high}")
        return number

    def parse(items: Any) -> tuple[tuple[int, int], ...]:
        if not isinstance(items, list | tuple):
            raise ValueError("expected a list")
        out = []
        for item in items:
            start, _, end = str(item).partition(":")
            first, last = value(start), value(end or start)
            out.append((first, last))
        return tuple(out)

    return parse


class TimeRange(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    start_time: Annotated[int, BeforeValidator(_minutes)]
    end_time: Annotated[int, BeforeValidator(_minutes)]


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name)") from None
    return name


Ranges = tuple[tuple[int, int], ...]


class TimeEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    times: tuple[TimeRange, ...] | None = None
    weekdays: Annotated[Ranges, BeforeValidator(_ranges(_WEEKDAYS, 0, 6))] | None = None
    days_of_month: Annotated[Ranges, BeforeValidator(_ranges(None, 1, 31))] | None = None
    months: Annotated[Ranges, BeforeValidator(_ranges(_MONTHS, 1, 12))] | None = None
    years: Annotated[Ranges, BeforeValidator(_ranges(None, 1970, 9999))] | None = None
    location: Annotated[str, AfterValidator(_zone)] = "UTC"

    def contains(self, instant: datetime) -> bool:
        local = instant.astimezone(ZoneInfo(self.location))
        if self.times is not None:
            minute = local.hour * 60 + local.minute
            if not any(r.start_time <= minute < r.end_time for r in self.times):
                return False
        if self.weekdays is not None and not _within(self.weekdays, local.weekday()):
            return False
        if self.days_of_month is not None:
            last = calendar.monthrange(local.year, local.month)[1]

            def day(n: int) -> int:
                return n if n > 0 else last + 1 + n

            if not any(day(a) <= local.day <= day(b) for a, b in self.days_of_month):
                return False
        if self.months is not None and not _within(self.months, local.month):
            return False
        return self.years is None or _within(self.years, local.year)


def _within(ranges: Ranges, value: int) -> bool:
    return any(a <= value <= b for a, b in ranges)


def active(entries: tuple[TimeEntry, ...], instant: datetime) -> bool:
    """Whether a named interval (a list of entries) contains `instant`."""
    return any(entry.contains(instant) for entry in entries)
