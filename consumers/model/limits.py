"""What one message may hold: the `ingest:` settings section, and its form for one batch.

runwatch must outlive whatever a producer (or an attacker) puts on the topic. A time UTC
cannot represent, a value nested past the JSON library's recursion limit, a megabyte of empty
records: each is refused with a reason (a dead letter, or one rejected record of an envelope)
before it can crash, stall or bloat the service. Decoding applies the checks; this module says
what the limits are and holds the two checks that values need before they become text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "DEFAULT_LIMITS",
    "LIMIT_REASONS",
    "PARSED_UTC",
    "Bounds",
    "IngestLimits",
    "in_parsed_utc",
    "json_text",
]

# pydantic-core's parsers give every time written with "Z" or "+00:00" this one tzinfo
# object (offset 0, equal to UTC). Two aware times sharing their tzinfo object compare and
# subtract field by field; any other pair calls each side's utcoffset() (0.79 against
# 0.02 us a compare, 1.5 against 0.3 us a subtraction, measured): the times the hot path
# holds every event against are kept in this one.
PARSED_UTC = TypeAdapter(datetime).validate_python("2000-01-01T00:00:00Z").tzinfo


def in_parsed_utc(value: datetime) -> datetime:
    """The same instant in PARSED_UTC (a naive time is taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=PARSED_UTC)
    return value.astimezone(PARSED_UTC)


# Dead-letter reasons of this module's checks (decoding adds too_many_records and internal).
TIME_OUT_OF_RANGE = "time_out_of_range"
TOO_DEEP = "too_deep"
TOO_LONG = "too_long"
TOO_MANY_LABELS = "too_many_labels"
LIMIT_REASONS = frozenset({TIME_OUT_OF_RANGE, TOO_DEEP, TOO_LONG, TOO_MANY_LABELS})


class IngestLimits(BaseModel):
    """The `ingest:` section. Defaults sit far above what Azure or the lifecycle library
    produce, and far below what would hurt: a refused message is a dead letter, kept whole
    in the store and on the dead-letter topic, so a limit set too low loses nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Containers around a leaf in a tag or property value (or JSON in a text column):
    # "v" is 0, ["v"] is 1. Capped below the JSON writers' recursion limits (orjson: 255).
    max_depth: int = Field(default=32, ge=1, le=200)
    # Tags, properties and removed tags of one event or run update, each counted alone.
    max_labels: int = Field(default=500, ge=0)
    max_key_chars: int = Field(default=1024, ge=1)  # a tag or property name
    max_value_chars: int = Field(default=65_536, ge=1)  # a tag or property value
    max_text_chars: int = Field(default=65_536, ge=1)  # Message and every other text column
    max_records: int = Field(default=5000, ge=1)  # per resource-log envelope or event array
    # Run times later than now + this, or earlier than `earliest`, are refused: one Completed
    # from year 9999 would otherwise be a run's state forever (later events lose to it).
    max_future_skew_s: float = Field(default=86_400.0, ge=0)
    earliest: datetime = datetime(2000, 1, 1, tzinfo=UTC)

    @field_validator("earliest")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:
            raise ValueError("cannot be represented in UTC") from None

    def at(self, now: datetime) -> Bounds:
        """The limits for a batch decoded at `now`: the time window computed once, in the
        parsed events' own tzinfo (PARSED_UTC), so each event's two compares are cheap."""
        try:
            latest = in_parsed_utc(now + timedelta(seconds=self.max_future_skew_s))
        except OverflowError:
            latest = datetime.max.replace(tzinfo=PARSED_UTC)
        values = min(self.max_value_chars, self.max_text_chars)
        earliest = in_parsed_utc(self.earliest)
        return Bounds(self, earliest, latest, self.max_key_chars, values)


DEFAULT_LIMITS = IngestLimits()


@dataclass(frozen=True, slots=True)
class Bounds:
    """IngestLimits at one moment. Also the pydantic validation context of run events, so
    that the validators that turn nested values into text see the configured limits."""

    limits: IngestLimits
    earliest: datetime
    latest: datetime
    # No string is longer than the message it came in: keys are measured only in messages
    # longer than the key limit, values and texts only in those longer than theirs.
    keys_checked_over: int
    values_checked_over: int


def limits_of(context: Any) -> IngestLimits:
    """The limits in a pydantic validation context (DEFAULT_LIMITS when built elsewhere)."""
    return context.limits if isinstance(context, Bounds) else DEFAULT_LIMITS


def json_text(value: Any, max_depth: int, max_chars: int) -> str:
    """A JSON value kept as its text (how tags, properties and Log Analytics text columns carry
    numbers and objects). Refused (PydanticCustomError, a validation error inside a model)
    when nested deeper than max_depth or longer than max_chars as text: the text of a nested
    value can be longer than its bytes on the wire (`1e9` -> `1000000000.0`)."""
    problem = _nesting_problem(value, max_depth)
    if problem == "deep":
        raise PydanticCustomError(
            TOO_DEEP,
            "nested more than {limit} levels deep (ingest.max_depth)",
            {"limit": max_depth},
        )
    if problem == "number":  # 1e999 read as infinity: not JSON, as orjson says on the slow path
        raise PydanticCustomError("not_json", "a number out of the range of a double")
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # integers past 64 bits: the standard library writes them
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > max_chars:
        raise PydanticCustomError(
            TOO_LONG,
            "{size} characters as JSON text, over the limit of {limit}",
            {"size": len(text), "limit": max_chars},
        )
    return text


def _nesting_problem(value: Any, limit: int) -> str | None:
    """ "deep" past `limit`, "number" for a non-finite float (pydantic's JSON parser reads 1e999
    as infinity, which JSON text cannot hold), else None. Iterative, so that no depth can
    exhaust Python's stack while it is measured."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return "number"
            continue
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return "deep"
        stack.extend((c, depth + 1) for c in children if isinstance(c, _WALKED))
    return None


_WALKED = (dict, list, tuple, float)
