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


def event_data(event: RunStatusEvent) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude_none=True)


def event_from(data: Any) -> RunStatusEvent:
    """An event of a stored state, validated again: the row may have been damaged."""
    if not isinstance(data, dict):
        raise WindowStateError(f"expected an event, got {type(data).__name__}")
    return RunStatusEvent.model_validate(data)


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
