"""What every decoded event and run update must pass, whichever format it came in: the time
window and the `ingest:` limits (labels, text lengths), and the short reason and detail a
refusal carries into the dead letter (the detail clipped, so an error never stores the
message it refuses)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from consumers.model.errors import DecodeError
from consumers.model.events import RunStatusEvent
from consumers.model.limits import (
    LIMIT_REASONS,
    TIME_OUT_OF_RANGE,
    TOO_LONG,
    TOO_MANY_LABELS,
    Bounds,
    IngestLimits,
)
from consumers.model.updates import RunUpdate

MAX_DETAIL = 500
TEXT_COLUMNS = tuple(
    name for name, f in RunStatusEvent.model_fields.items() if f.annotation == str | None
)
_UPDATE_TEXT = ("ParentRunId", "RootRunId", "ExperimentName", "WorkspaceName", "Description")


def admit_event(event: RunStatusEvent, bounds: Bounds, size: int) -> RunStatusEvent:
    """The checks every decoded event passes, whichever path made it. Cheap on the hot path:
    two time compares and two lengths; string lengths only when the message (`size` bytes)
    is long enough to hold a string over a limit (a string is never longer than its bytes;
    nested values made into text were measured when they were made)."""
    time = event.TimeGenerated
    if time > bounds.latest or time < bounds.earliest:
        raise _time_refused(time, bounds)
    tags, properties = event.Tags, event.Properties
    most = bounds.limits.max_labels
    if len(tags) > most or len(properties) > most:
        bag = "Tags" if len(tags) > most else "Properties"
        raise _too_many(bag, len(getattr(event, bag)), most)
    if size > bounds.keys_checked_over:
        bags = (("Tags", tags), ("Properties", properties))
        _admit_sizes(event.__dict__, TEXT_COLUMNS, bags, bounds, size)
    return event


def admit_update(update: RunUpdate, bounds: Bounds, size: int) -> RunUpdate:
    """`admit_event` for run updates: the same time window and limits."""
    time = update.TimeGenerated
    if time > bounds.latest or time < bounds.earliest:
        raise _time_refused(time, bounds)
    most = bounds.limits.max_labels
    removed: dict[str, str | None] = dict.fromkeys(update.RemoveTags)
    bags = (
        ("SetTags", update.SetTags),
        ("RemoveTags", removed),
        ("AddProperties", update.AddProperties),
    )
    for bag, labels in bags:
        if len(labels) > most:
            raise _too_many(bag, len(labels), most)
    if size > bounds.keys_checked_over:
        _admit_sizes(update.__dict__, _UPDATE_TEXT, bags, bounds, size)
    return update


def _admit_sizes(
    values: dict[str, Any],
    text_columns: tuple[str, ...],
    bags: tuple[tuple[str, Mapping[str, str | None]], ...],
    bounds: Bounds,
    size: int,
) -> None:
    limits = bounds.limits
    for bag, labels in bags:
        if labels and max(map(len, labels)) > limits.max_key_chars:
            key = next(k for k in labels if len(k) > limits.max_key_chars)
            raise _too_long(f"{bag} key {key[:40]!r}...", len(key), limits, "max_key_chars")
    if size <= bounds.values_checked_over:
        return
    for bag, labels in bags:
        for key, value in labels.items():
            if value is not None and len(value) > limits.max_value_chars:
                raise _too_long(f"{bag}.{key[:40]}", len(value), limits, "max_value_chars")
    for column in text_columns:
        value = values[column]
        if value is not None and len(value) > limits.max_text_chars:
            raise _too_long(column, len(value), limits, "max_text_chars")


def _time_refused(time: datetime, bounds: Bounds) -> DecodeError:
    if time > bounds.latest:
        skew = bounds.limits.max_future_skew_s
        why = f"later than now + {skew:g} s (ingest.max_future_skew_s)"
    else:
        why = f"earlier than {bounds.earliest.isoformat()} (ingest.earliest)"
    return DecodeError(TIME_OUT_OF_RANGE, f"TimeGenerated {time.isoformat()} is {why}")


def _too_long(what: str, size: int, limits: IngestLimits, key: str) -> DecodeError:
    limit = getattr(limits, key)
    detail = f"{what}: {size} characters, over the limit of {limit} (ingest.{key})"
    return DecodeError(TOO_LONG, detail)


def _too_many(bag: str, count: int, limit: int) -> DecodeError:
    detail = f"{bag}: {count} entries, over the limit of {limit} (ingest.max_labels)"
    return DecodeError(TOO_MANY_LABELS, detail)


def schema_error(detail: str) -> DecodeError:
    return DecodeError("schema", clip(detail))


def reason_of(exc: ValidationError) -> str:
    """A limit's own error type (a time UTC cannot hold, a value nested too deep) names the
    dead letter; anything else pydantic refuses is a schema error."""
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        if err["type"] in LIMIT_REASONS:
            return err["type"]
    return "schema"


def explain(exc: ValidationError) -> str:
    """pydantic's errors as "Field: message; ...": one per field, our own ValueError text
    preferred over the "Input should be ..." of the union member that was tried first. When a
    limit was broken, only that: it is the reason, the rest is noise from union members."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    limit = [err for err in errors if err["type"] in LIMIT_REASONS]
    found: dict[str, str] = {}
    for err in limit or errors:
        # Drop the union member pydantic names in the location: "literal[...]", "function-...]".
        loc = ".".join(str(p) for p in err["loc"] if not str(p).endswith("]")) or "event"
        if loc not in found or err["type"] == "value_error":
            found[loc] = err["msg"].removeprefix("Value error, ")
    parts = [f"{loc}: {msg}" for loc, msg in list(found.items())[:3]]
    if len(found) > 3:
        parts.append(f"(+{len(found) - 3} more)")
    return "; ".join(parts)


def json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
