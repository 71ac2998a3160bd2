"""One Kafka message -> run events, whichever of the accepted formats it is in.

Native events take a fast path (`model_validate_json` straight on the bytes); everything else,
and every failure, goes through `orjson.loads` and shape detection, so a message is classified
the same way whichever path it took. A binary-mode CloudEvent is recognised by its headers
(ingest.cloudevents_binding); Log Analytics rows (ingest.log_analytics) are native
objects, arrays of them, query responses or data-export envelopes. An empty string is no
value in any column (`""` is how Kusto says null), so it is read as null in every format.

A bad message raises `DecodeError` whose `reason` is a short label (it becomes a metric label
and a dead-letter header); a bad record inside a multi-record message is counted in
`Decoded.rejected` while its good neighbours go through.

Nothing else ever leaves `decode`: every decoder runs inside its isolation boundary (the
message's in `decode`, each envelope record's in `_collect`; `_internal` is what both turn any
other exception into: reason `internal`), and every event and run update passes one admission check
(`admission.admit_event`, `admit_update`) against the `ingest:` limits (consumers.model
.limits): times UTC cannot hold or that are implausible, too many or too long labels and texts.

This module finds the shape; `azure` maps each of Azure's shapes to the model's columns and
`admission` holds the checks and the refusal texts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError
from pydantic_core import SchemaValidator

from consumers.ingest import log_analytics
from consumers.ingest.admission import (
    TEXT_COLUMNS,
    admit_event,
    admit_update,
    clip,
    explain,
    json_kind,
    reason_of,
    schema_error,
)
from consumers.ingest.azure import (
    COLUMNS,
    FIELDS,
    REQUIRED,
    azure_values,
    from_grid_event,
    from_record,
    from_row,
    grid_kind,
    is_row,
    is_table_row,
    other_table,
    run_event_type,
    to_columns,
)
from consumers.ingest.cloudevents_binding import KafkaHeaders, binary_attributes
from consumers.model.errors import DecodeError
from consumers.model.events import RunStatusEvent
from consumers.model.limits import (
    DEFAULT_LIMITS,
    TOO_DEEP,
    Bounds,
)
from consumers.model.updates import UPDATE_KEY, RunUpdate

__all__ = [
    "INTERNAL",
    "Decoded",
    "EventFormat",
    "Rejected",
    "decode",
]

INTERNAL = "internal"  # an exception no check foresaw: a bug, isolated to its message
TOO_MANY_RECORDS = "too_many_records"


class EventFormat(StrEnum):
    NATIVE = "native"
    RESOURCE_LOG = "resource-log"
    EVENT_GRID = "event-grid"
    CLOUDEVENTS = "cloudevents"  # structured (the value) and binary (headers) mode alike
    LOG_ANALYTICS = "log-analytics"  # query responses, row arrays, workspace data export


@dataclass(frozen=True, slots=True)
class Rejected:
    """The bad records of one envelope, summarised: a count and the first few, never one text
    per record (a megabyte of `{}` once kept 37 MB of them until the batch was stored)."""

    count: int
    reason: str  # the dead-letter reason of the message: the first bad record's
    first: tuple[str, ...]  # e.g. "records[3]: Status: ...", at most SHOWN_REJECTIONS

    def summary(self) -> str:
        shown = "; ".join(self.first)
        more = f" (+{self.count - len(self.first)} more)" if self.count > len(self.first) else ""
        return clip(f"{self.count} record(s) rejected: {shown}{more}", 4000)


class Decoded(NamedTuple):
    """What one message held: the run events, plus what was left out and why. A named tuple
    (immutable, like the frozen dataclasses elsewhere), because one is made per message and
    a frozen dataclass's __init__ (one object.__setattr__ per field) cost three times as much."""

    format: EventFormat
    events: tuple[RunStatusEvent, ...]
    skipped: int = 0  # well-formed but not run-status (other categories, other event types)
    rejected: Rejected | None = None
    # Tag/property/description changes (consumers.model.updates): stored, never seen by rules.
    updates: tuple[RunUpdate, ...] = ()


SHOWN_REJECTIONS = 5
_BOM = b"\xef\xbb\xbf"
_BRACE = ord("{")
_NATIVE = EventFormat.NATIVE  # a global is cheaper than an enum member lookup
_new = tuple.__new__
_NATIVE_STARTS = (b'{"TimeGenerated"', b'{"TenantId"')  # our emitter; log-analytics exports
_FOREIGN_FIRST_KEYS = frozenset(
    b"records id topic subject eventtype eventtime data dataversion metadataversion "
    b"specversion source type time datacontenttype runupdate tables".split()
)
_WHITESPACE = b" \t\r\n"


def _fast_path_validator() -> SchemaValidator:
    """The model's validator, but refusing "" in the text columns (`min_length` 1, checked
    natively, so free): such a message takes the slow path, where "" is null. Looking for ""
    otherwise cost 0.3-0.6 us of the ~6 us a native event costs (a bytes scan for `""` is
    slow: JSON is full of quotes). pydantic-core would reuse the model's own prebuilt
    validator for a schema of a complete model class, so the class reads as incomplete while
    this one is built (tests/test_decoding_azure.py checks that "" is refused by it)."""
    schema: Any = copy.deepcopy(RunStatusEvent.__pydantic_core_schema__)
    for name in TEXT_COLUMNS:
        inner = schema["schema"]["fields"][name]["schema"]
        while inner["type"] != "str":  # default -> nullable -> str
            inner = inner["schema"]
        inner["min_length"] = max(inner.get("min_length", 0), 1)
    RunStatusEvent.__pydantic_complete__ = False
    try:
        return SchemaValidator(schema)
    finally:
        RunStatusEvent.__pydantic_complete__ = True


# model_validate(_json) without its Python wrapper: ~0.4 us of the ~6 us an event costs.
_VALIDATE_JSON = _fast_path_validator().validate_json
_VALIDATE = RunStatusEvent.__pydantic_validator__.validate_python


def decode(
    value: bytes | None,
    *,
    max_bytes: int = 1_048_576,
    bounds: Bounds | None = None,
    headers: KafkaHeaders | None = None,
) -> Decoded:
    """Decode one message; raises `DecodeError` when nothing in it can be used, and nothing
    else. `bounds` is `IngestLimits.at(now)`, computed once per batch by the caller; without
    it the default limits apply at the wall clock's now. `headers` are the record's (a list
    of (str, bytes)); only a binary-mode CloudEvent needs them."""
    if bounds is None:
        bounds = DEFAULT_LIMITS.at(datetime.now(UTC))
    try:  # the message's isolation boundary: every decoder below runs inside it
        if headers:
            attributes = binary_attributes(headers)
            if attributes is not None:
                return _decode_binary(attributes, value, max_bytes, bounds)
        return _decode(value, max_bytes, bounds)
    except DecodeError:
        raise
    except Exception as exc:
        raise _internal(exc) from exc


def _internal(exc: Exception) -> DecodeError:
    """What an isolation boundary makes of an exception no check foresaw (a bug): reason
    `internal`, the exception type in the detail, instead of an exception that would stop the
    consumer again on every redelivery of the same message."""
    return DecodeError(INTERNAL, clip(f"{type(exc).__name__}: {exc}"))


def _decode(value: bytes | None, max_bytes: int, bounds: Bounds) -> Decoded:
    if not value:
        raise DecodeError("empty", "message has no value")
    if len(value) > max_bytes:
        raise DecodeError("too_large", f"{len(value)} bytes > limit of {max_bytes}")
    if value[0] != _BRACE:
        value = value.strip(_WHITESPACE)
        if not value:
            raise DecodeError("empty", "message is only whitespace")
    # NaN/Infinity are not JSON but pydantic's parser takes them; orjson rejects them below.
    if (
        value[0] == _BRACE
        and (value.startswith(_NATIVE_STARTS) or _maybe_native(value))
        and b"NaN" not in value
        and b"Infinity" not in value
    ):
        try:
            event = _VALIDATE_JSON(value, context=bounds)
        except ValidationError:
            pass  # reclassified below, with case-insensitive keys
        else:
            # tuple.__new__ skips the named tuple's Python-level __new__ (0.37 against 0.74 us)
            return _new(Decoded, (_NATIVE, (admit_event(event, bounds, len(value)),), 0, None, ()))
    return _decode_document(_parse(value), bounds, len(value))


def _decode_binary(
    attributes: dict[str, str], value: bytes | None, max_bytes: int, bounds: Bounds
) -> Decoded:
    """A binary-mode CloudEvent: attributes from the headers, data from the value. Other event
    types are skipped without reading the value (it need not even be JSON)."""
    if run_event_type(attributes, "type") is None:
        return Decoded(EventFormat.CLOUDEVENTS, (), 1)
    if not value:
        raise DecodeError("empty", "binary-mode CloudEvent without data (no message value)")
    if len(value) > max_bytes:
        raise DecodeError("too_large", f"{len(value)} bytes > limit of {max_bytes}")
    fields = from_grid_event({**attributes, "data": _parse(value)}, cloud=True)
    if fields is None:  # not reached: its type was checked above
        return Decoded(EventFormat.CLOUDEVENTS, (), 1)
    size = len(value) + sum(map(len, attributes.values()))  # headers hold text columns too
    return Decoded(EventFormat.CLOUDEVENTS, (_validate(fields, bounds, size, azure=True),))


def _maybe_native(value: bytes) -> bool:
    """Peek at the first key: a failed fast path on a 50-record envelope costs ~10x its parse."""
    start = value.find(b'"', 1, 16)
    end = value.find(b'"', start + 1, start + 20) if start > 0 else -1
    return end < 0 or value[start + 1 : end].lower() not in _FOREIGN_FIRST_KEYS


def _parse(value: bytes) -> Any:
    if value.startswith(_BOM):  # RFC 8259 lets parsers ignore it; .NET producers write one
        value = value[len(_BOM) :]
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise DecodeError("not_utf8", clip(str(bad))) from None
        if b"\x00" in value:  # valid UTF-8 but NUL bytes: UTF-16/32 without a BOM
            raise DecodeError("not_utf8", "NUL bytes: looks like UTF-16 or UTF-32") from None
        if "depth limit" in str(exc):  # valid JSON, nested past what the parser builds
            raise DecodeError(TOO_DEEP, clip(f"nested too deep to parse: {exc}")) from None
        raise DecodeError("not_json", clip(str(exc))) from None


def _decode_document(doc: Any, bounds: Bounds, size: int) -> Decoded:
    """`size`, the message's length, bounds every string in it: short messages skip the
    length checks."""
    if isinstance(doc, list):
        return _decode_grid_array(doc, bounds, size)
    if not isinstance(doc, dict):
        raise DecodeError("unknown_shape", f"JSON {json_kind(doc)}, expected an object or array")
    keys = {key.lower(): key for key in doc}
    if UPDATE_KEY.lower() in keys:
        return _decode_update(doc, keys[UPDATE_KEY.lower()], bounds, size)
    if "records" in keys:
        records = doc[keys["records"]]
        if not isinstance(records, list):
            raise DecodeError(
                "unknown_shape", f'"records" is a JSON {json_kind(records)}, not an array'
            )
        fmt = EventFormat.RESOURCE_LOG
        if records and isinstance(records[0], dict) and is_table_row(records[0]):
            fmt = EventFormat.LOG_ANALYTICS  # a workspace data export
        return _collect(fmt, "records", from_record, records, bounds, size)
    if "tables" in keys and not any(key in keys for key in REQUIRED):
        tables = doc[keys["tables"]]
        _check_count(log_analytics.row_count(tables), bounds)
        rows = log_analytics.query_rows(tables)
        return _collect(EventFormat.LOG_ANALYTICS, "rows", from_row, rows, bounds, size)
    cloud = True if "specversion" in keys else False if "eventtype" in keys else None
    if cloud is not None:
        fmt = EventFormat.CLOUDEVENTS if cloud else EventFormat.EVENT_GRID
        fields = from_grid_event(doc, cloud=cloud)
        if fields is None:
            return Decoded(fmt, (), 1)
        return Decoded(fmt, (_validate(fields, bounds, size, azure=True),))
    if any(key in keys for key in REQUIRED):
        if other_table(doc):  # a Log Analytics row of another table
            return Decoded(EventFormat.LOG_ANALYTICS, (), 1)
        fields = to_columns(doc, COLUMNS)
        fields.update((key, value) for key, value in doc.items() if key in FIELDS)  # as pydantic
        return Decoded(_NATIVE, (_validate(fields, bounds, size, azure=False),))
    shown = ", ".join(list(doc)[:8])
    detail = f"object without records, eventType, specversion or run columns ({shown})"
    raise DecodeError("unknown_shape", clip(detail))


def _decode_update(doc: dict[str, Any], key: str, bounds: Bounds, size: int) -> Decoded:
    """`{"RunUpdate": {...}}` and nothing else beside it: a kind of its own, never a guess."""
    if len(doc) != 1:
        others = ", ".join(k for k in doc if k != key)
        raise schema_error(f"{UPDATE_KEY}: unexpected keys beside it ({others})")
    try:
        update = RunUpdate.model_validate(doc[key], context=bounds)
    except ValidationError as exc:
        raise DecodeError(reason_of(exc), clip(f"{UPDATE_KEY}: {explain(exc)}")) from None
    return Decoded(_NATIVE, (), updates=(admit_update(update, bounds, size),))


def _decode_grid_array(items: list[Any], bounds: Bounds, size: int) -> Decoded:
    """Event Grid delivers arrays; the first recognisable entry decides which schema they use."""
    cloud = next((kind for kind in map(grid_kind, items) if kind is not None), None)
    if cloud is None:
        if items and isinstance(items[0], dict) and is_row(items[0]):
            return _collect(EventFormat.LOG_ANALYTICS, "", from_row, items, bounds, size)
        what = f"JSON array of {json_kind(items[0])}" if items else "empty JSON array"
        raise DecodeError("unknown_shape", f"{what}, not Event Grid events or table rows")
    fmt = EventFormat.CLOUDEVENTS if cloud else EventFormat.EVENT_GRID

    def entry(item: Any) -> dict[str, Any] | None:
        kind = grid_kind(item)
        if kind is None:
            raise schema_error(f"a JSON {json_kind(item)} that is not an event")
        if kind != cloud:
            what = "a CloudEvent" if kind else "an Event Grid event"
            raise schema_error(f"{what} among {fmt} events")
        return from_grid_event(item, cloud=cloud)

    return _collect(fmt, "", entry, items, bounds, size)


def _collect(
    fmt: EventFormat,
    label: str,
    mapper: Callable[[Any], dict[str, Any] | None],
    items: list[Any],
    bounds: Bounds,
    size: int,
) -> Decoded:
    """Map every record, each in its own isolation boundary; bad ones are counted (the first
    few kept), and only an all-bad message is an error. The record limit is checked first, so
    what one envelope costs is bounded before any record is looked at."""
    _check_count(len(items), bounds)
    events: list[RunStatusEvent] = []
    first: list[str] = []
    reasons: dict[str, int] = {}  # in the order first seen
    skipped = 0
    for index, item in enumerate(items):
        try:  # each record's isolation boundary: only this record is rejected
            fields = mapper(item)
            event = None if fields is None else _validate(fields, bounds, size, azure=True)
        except Exception as exc:
            refused = exc if isinstance(exc, DecodeError) else _internal(exc)
            reasons[refused.reason] = reasons.get(refused.reason, 0) + 1
            if len(first) < SHOWN_REJECTIONS:
                first.append(clip(f"{label}[{index}]: {refused.detail}", 300))
            # Its traceback holds this frame: a cycle that would keep the whole parsed
            # envelope alive until the next garbage collection.
            del refused
            continue
        if event is None:
            skipped += 1
        else:
            events.append(event)
    if not reasons:
        return Decoded(fmt, tuple(events), skipped)
    count = sum(reasons.values())
    if not events:
        # One precise reason shared by every record names the message; mixed, or plain schema
        # errors, are no_valid_records as they always were.
        (only, *others) = reasons
        reason = only if not others and only != "schema" else "no_valid_records"
        detail = f"every record rejected ({count}), the first: {first[0]}"
        raise DecodeError(reason, clip(detail))
    first_reason = next(iter(reasons))
    return Decoded(fmt, tuple(events), skipped, Rejected(count, first_reason, tuple(first)))


def _check_count(count: int, bounds: Bounds) -> None:
    limit = bounds.limits.max_records
    if count > limit:
        detail = f"{count} records, over the limit of {limit} (ingest.max_records)"
        raise DecodeError(TOO_MANY_RECORDS, detail)


def _validate(fields: dict[str, Any], bounds: Bounds, size: int, *, azure: bool) -> RunStatusEvent:
    if "" in fields.values():  # Kusto's null: a root run's ParentRunId is "", not a parent
        for column in [column for column, value in fields.items() if value == ""]:
            del fields[column]
    try:
        event = _VALIDATE(fields, context=bounds)
    except ValidationError as exc:
        if azure and azure_values(fields, bounds.limits):
            return _validate(fields, bounds, size, azure=False)
        raise DecodeError(reason_of(exc), clip(explain(exc))) from None
    return admit_event(event, bounds, size)
