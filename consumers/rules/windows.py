"""The window state of the rules that count events (threshold, flatline) as data, so that a
warm-up can load what the last evaluator held instead of replaying the window.

A state is only valid for the definition that built it: `fingerprint` hashes the parts of a
rule that shape its state (its kind, its filter, the window, the grouping, a ratio's `of`,
and the format of the state), not those that only judge it (limit, operator, interval,
receivers): changing a limit keeps the counts, changing a filter replays the rule.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from consumers.model.events import RunStatusEvent
from consumers.rules.model import Rule

FORMAT = 1  # of the states below; a change makes every stored state another fingerprint

# The spec fields that shape a kind's state.
_SHAPING: dict[str, frozenset[str]] = {
    "threshold": frozenset({"of", "window", "group_by"}),
    "flatline": frozenset({"window", "group_by"}),
}


class WindowStateError(ValueError):
    """A stored state this build cannot read (damaged, or of another format)."""


def fingerprint(rule: Rule) -> str | None:
    """The fingerprint of what shapes the rule's window state; None for kinds without one."""
    shaping = _SHAPING.get(rule.kind)
    if shaping is None:
        return None
    spec: Any = getattr(rule, rule.kind)
    parts = {
        "format": FORMAT,
        "kind": rule.kind,
        "when": rule.when.model_dump(mode="json"),
        "spec": spec.model_dump(mode="json", include=set(shaping)),
    }
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


Ref = tuple[str, str, str]  # an event's natural key: RunId, TimeGenerated (ISO 8601), Status


class ExampleRefs:
    """The example events of one state, taken as references into the events table (their
    natural key), numbered: an event is often the example of a group in many rules, and the
    events table holds it whole anyway (a state of whole events was 3x the size)."""

    __slots__ = ("_index", "refs")

    def __init__(self) -> None:
        self._index: dict[int, int] = {}  # id(event) -> its number; the events outlive this
        self.refs: list[Ref] = []

    def ref(self, event: RunStatusEvent | None) -> int | None:
        if event is None:
            return None
        number = self._index.get(id(event))
        if number is None:
            number = self._index[id(event)] = len(self.refs)
            self.refs.append((event.RunId, event.TimeGenerated.isoformat(), event.Status))
        return number


def refs_of(state: dict[str, Any]) -> list[Ref]:
    """The example references of a stored state (WindowStateError if damaged)."""
    refs = state.get("examples")
    if not isinstance(refs, list):
        raise WindowStateError("no example list")
    out = []
    for ref in refs:
        if not (isinstance(ref, list) and len(ref) == 3 and all(isinstance(p, str) for p in ref)):
            raise WindowStateError(f"damaged example reference {ref!r}")
        out.append((ref[0], ref[1], ref[2]))
    return out


def example(events: list[RunStatusEvent], number: Any) -> RunStatusEvent | None:
    """The numbered example of a state being loaded (None stays None)."""
    if number is None:
        return None
    if not isinstance(number, int) or not 0 <= number < len(events):
        raise WindowStateError(f"damaged example number {number!r}")
    return events[number]


def encode(state: dict[str, Any]) -> str:
    return orjson.dumps(state).decode()


def decode(text: str) -> dict[str, Any]:
    try:
        state = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise WindowStateError(f"not JSON: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise WindowStateError("not a window state of this format")
    return state
