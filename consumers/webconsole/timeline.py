"""A run's status timeline as a chart: one bar, a segment per stretch in a state, its width
the share of the run's time, and the total per state. Pure numbers; the template draws
them as inline SVG (no script, no image request)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consumers.store.queries import TimelineEntry

WIDTH = 600.0
MIN_WIDTH = 2.0  # an instant (a terminal state) still shows
_COLORS = {
    "NotStarted": "#9aa5b1",
    "Queued": "#b8c4ce",
    "Preparing": "#7fb3d5",
    "Provisioning": "#7fb3d5",
    "Starting": "#5dade2",
    "Running": "#3498db",
    "Finalizing": "#48c9b0",
    "CancelRequested": "#f5b041",
    "Completed": "#27ae60",
    "Failed": "#e74c3c",
    "Canceled": "#a04000",
    "NotResponding": "#8e44ad",
}
_OTHER = "#7f8c8d"


@dataclass(frozen=True, slots=True)
class Segment:
    status: str
    x: float
    width: float
    color: str
    seconds: float | None


@dataclass(frozen=True, slots=True)
class Total:
    status: str
    seconds: float
    color: str


@dataclass(frozen=True, slots=True)
class Chart:
    segments: tuple[Segment, ...]
    totals: tuple[Total, ...]
    width: float = WIDTH


def color(status: str) -> str:
    return _COLORS.get(status, _OTHER)


def chart(entries: Sequence[TimelineEntry]) -> Chart:
    timed = [max(0.0, e.seconds_in_state or 0.0) for e in entries]
    whole = sum(timed)
    if not entries:
        return Chart((), ())
    # instants get MIN_WIDTH, the rest shares what is left in proportion to time
    instants = sum(1 for t in timed if whole == 0 or t / whole * WIDTH < MIN_WIDTH)
    room = WIDTH - instants * MIN_WIDTH
    segments, x = [], 0.0
    for entry, seconds in zip(entries, timed, strict=True):
        share = 0.0 if whole == 0 else seconds / whole * WIDTH
        width = MIN_WIDTH if share < MIN_WIDTH else seconds / whole * room
        segments.append(
            Segment(entry.status, round(x, 2), round(width, 2), color(entry.status), seconds)
        )
        x += width
    totals: dict[str, float] = {}
    for entry, seconds in zip(entries, timed, strict=True):
        totals[entry.status] = totals.get(entry.status, 0.0) + seconds
    return Chart(
        tuple(segments),
        tuple(Total(status, seconds, color(status)) for status, seconds in totals.items()),
    )


def human(seconds: float | None) -> str:
    """3 s, 4 min 5 s, 2 h 3 min, 1 d 4 h."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
