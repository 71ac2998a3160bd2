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
(`_admit_event`, `_admit_update`) against the `ingest:` limits (consumers.model.limits): times UTC
cannot hold or that are implausible, too many or too long labels and texts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import PydanticCustomError, SchemaValidator

from consumers.ingest import log_analytics
from consumers.ingest.cloudevents_binding import KafkaHeaders, binary_attributes
from consumers.model.errors import DecodeError
from consumers.model.events import RunStatusEvent
from consumers.model.limits import (
    DEFAULT_LIMITS,
    LIMIT_REASONS,
    TIME_OUT_OF_RANGE,
    TOO_DEEP,
    TOO_LONG,
    TOO_MANY_LABELS,
    Bounds,
    IngestLimits,
    json_text,
)
from consumers.model.updates import UPDATE_KEY, RunUpdate

__all__ = [
    "INTERNAL",
    "RUN_CATEGORY",
    "RUN_EVENT_TYPE",
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
        return _clip(f"{self.count} record(s) rejected: {shown}{more}", 4000)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one message held: the run events, plus what was left out and why."""

    format: EventFormat
    events: tuple[RunStatusEvent, ...]
    skipped: int = 0  # well-formed but not run-status (other categories, other event types)
    rejected: Rejected | None = None
    # Tag/property/description changes (consumers.model.updates): stored, never seen by rules.
    updates: tuple[RunUpdate, ...] = ()


RUN_CATEGORY = "AmlRunStatusChangedEvent"
RUN_EVENT_TYPE = "Microsoft.MachineLearningServices.RunStatusChanged"
MAX_DETAIL = 500
SHOWN_REJECTIONS = 5

_FIELDS = frozenset(RunStatusEvent.model_fields)
_COLUMNS: dict[str, str | None] = {name.lower(): name for name in _FIELDS}
_REQUIRED = ("timegenerated", "runid", "status")
# Per-format renames; None drops a key that only looks like a column (the record's property bag).
_RECORD_KEYS: dict[str, str | None] = {**_COLUMNS, "time": "TimeGenerated", "properties": None}
_DATA_KEYS: dict[str, str | None] = {
    **_COLUMNS,
    "runstatus": "Status",
    "runtags": "Tags",
    "runproperties": "Properties",
}
# (type, time, workspace id) attribute names of Event Grid (False) and CloudEvents (True).
_GRID_KEYS = {False: ("eventType", "eventTime", "topic"), True: ("type", "time", "source")}
_NUMERIC_LEVELS = {1: "Critical", 2: "Error", 3: "Warning", 4: "Informational"}  # as Azure's
_TEXT_COLUMNS = tuple(
    name for name, f in RunStatusEvent.model_fields.items() if f.annotation == str | None
)
_UPDATE_TEXT = ("ParentRunId", "RootRunId", "ExperimentName", "WorkspaceName", "Description")
_BOM = b"\xef\xbb\xbf"
_BRACE = ord("{")
_NATIVE = EventFormat.NATIVE  # a global is cheaper than an enum member lookup
_NATIVE_STARTS = (b'{"TimeGenerated"', b'{"TenantId"')  # our emitter; log-analytics exports
_FOREIGN_FIRST_KEYS = frozenset(
    b"records id topic subject eventtype eventtime data dataversion metadataversion "
    b"specversion source type time datacontenttype runupdate tables".split()
)
_ROW_KEYS = frozenset(_REQUIRED)
_WHITESPACE = b" \t\r\n"
_MISSING: Any = object()


def _fast_path_validator() -> SchemaValidator:
    """The model's validator, but refusing "" in the text columns (`min_length` 1, checked
    natively, so free): such a message takes the slow path, where "" is null. Looking for ""
    otherwise cost 0.3-0.6 us of the ~6 us a native event costs (a bytes scan for `""` is
    slow: JSON is full of quotes). pydantic-core would reuse the model's own prebuilt
    validator for a schema of a complete model class, so the class reads as incomplete while
    this one is built (tests/test_decoding_azure.py checks that "" is refused by it)."""
    schema: Any = copy.deepcopy(RunStatusEvent.__pydantic_core_schema__)
    for name in _TEXT_COLUMNS:
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
    return DecodeError(INTERNAL, _clip(f"{type(exc).__name__}: {exc}"))


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
            return Decoded(_NATIVE, (_admit_event(event, bounds, len(value)),))
    return _decode_document(_parse(value), bounds, len(value))


def _decode_binary(
    attributes: dict[str, str], value: bytes | None, max_bytes: int, bounds: Bounds
) -> Decoded:
    """A binary-mode CloudEvent: attributes from the headers, data from the value. Other event
    types are skipped without reading the value (it need not even be JSON)."""
    if _run_event_type(attributes, "type") is None:
        return Decoded(EventFormat.CLOUDEVENTS, (), 1)
    if not value:
        raise DecodeError("empty", "binary-mode CloudEvent without data (no message value)")
    if len(value) > max_bytes:
        raise DecodeError("too_large", f"{len(value)} bytes > limit of {max_bytes}")
    fields = _grid_event({**attributes, "data": _parse(value)}, cloud=True)
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
            raise DecodeError("not_utf8", _clip(str(bad))) from None
        if b"\x00" in value:  # valid UTF-8 but NUL bytes: UTF-16/32 without a BOM
            raise DecodeError("not_utf8", "NUL bytes: looks like UTF-16 or UTF-32") from None
        if "depth limit" in str(exc):  # valid JSON, nested past what the parser builds
            raise DecodeError(TOO_DEEP, _clip(f"nested too deep to parse: {exc}")) from None
        raise DecodeError("not_json", _clip(str(exc))) from None


def _decode_document(doc: Any, bounds: Bounds, size: int) -> Decoded:
    """`size`, the message's length, bounds every string in it: short messages skip the
    length checks."""
    if isinstance(doc, list):
        return _decode_grid_array(doc, bounds, size)
    if not isinstance(doc, dict):
        raise DecodeError("unknown_shape", f"JSON {_kind(doc)}, expected an object or array")
    keys = {key.lower(): key for key in doc}
    if UPDATE_KEY.lower() in keys:
        return _decode_update(doc, keys[UPDATE_KEY.lower()], bounds, size)
    if "records" in keys:
        records = doc[keys["records"]]
        if not isinstance(records, list):
            raise DecodeError(
                "unknown_shape", f'"records" is a JSON {_kind(records)}, not an array'
            )
        fmt = EventFormat.RESOURCE_LOG
        if records and isinstance(records[0], dict) and _is_table_row(records[0]):
            fmt = EventFormat.LOG_ANALYTICS  # a workspace data export
        return _collect(fmt, "records", _record, records, bounds, size)
    if "tables" in keys and not any(key in keys for key in _REQUIRED):
        tables = doc[keys["tables"]]
        _check_count(log_analytics.row_count(tables), bounds)
        rows = log_analytics.query_rows(tables)
        return _collect(EventFormat.LOG_ANALYTICS, "rows", _row, rows, bounds, size)
    cloud = True if "specversion" in keys else False if "eventtype" in keys else None
    if cloud is not None:
        fmt = EventFormat.CLOUDEVENTS if cloud else EventFormat.EVENT_GRID
        fields = _grid_event(doc, cloud=cloud)
        if fields is None:
            return Decoded(fmt, (), 1)
        return Decoded(fmt, (_validate(fields, bounds, size, azure=True),))
    if any(key in keys for key in _REQUIRED):
        if _other_table(doc):  # a Log Analytics row of another table
            return Decoded(EventFormat.LOG_ANALYTICS, (), 1)
        fields = _columns(doc, _COLUMNS)
        fields.update((key, value) for key, value in doc.items() if key in _FIELDS)  # as pydantic
        return Decoded(_NATIVE, (_validate(fields, bounds, size, azure=False),))
    shown = ", ".join(list(doc)[:8])
    detail = f"object without records, eventType, specversion or run columns ({shown})"
    raise DecodeError("unknown_shape", _clip(detail))


def _decode_update(doc: dict[str, Any], key: str, bounds: Bounds, size: int) -> Decoded:
    """`{"RunUpdate": {...}}` and nothing else beside it: a kind of its own, never a guess."""
    if len(doc) != 1:
        others = ", ".join(k for k in doc if k != key)
        raise _schema(f"{UPDATE_KEY}: unexpected keys beside it ({others})")
    try:
        update = RunUpdate.model_validate(doc[key], context=bounds)
    except ValidationError as exc:
        raise DecodeError(_reason(exc), _clip(f"{UPDATE_KEY}: {_explain(exc)}")) from None
    return Decoded(_NATIVE, (), updates=(_admit_update(update, bounds, size),))


def _decode_grid_array(items: list[Any], bounds: Bounds, size: int) -> Decoded:
    """Event Grid delivers arrays; the first recognisable entry decides which schema they use."""
    cloud = next((kind for kind in map(_grid_kind, items) if kind is not None), None)
    if cloud is None:
        if items and isinstance(items[0], dict) and _is_row(items[0]):
            return _collect(EventFormat.LOG_ANALYTICS, "", _row, items, bounds, size)
        what = f"JSON array of {_kind(items[0])}" if items else "empty JSON array"
        raise DecodeError("unknown_shape", f"{what}, not Event Grid events or table rows")
    fmt = EventFormat.CLOUDEVENTS if cloud else EventFormat.EVENT_GRID

    def entry(item: Any) -> dict[str, Any] | None:
        kind = _grid_kind(item)
        if kind is None:
            raise _schema(f"a JSON {_kind(item)} that is not an event")
        if kind != cloud:
            what = "a CloudEvent" if kind else "an Event Grid event"
            raise _schema(f"{what} among {fmt} events")
        return _grid_event(item, cloud=cloud)

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
                first.append(_clip(f"{label}[{index}]: {refused.detail}", 300))
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
        raise DecodeError(reason, _clip(detail))
    first_reason = next(iter(reasons))
    return Decoded(fmt, tuple(events), skipped, Rejected(count, first_reason, tuple(first)))


def _check_count(count: int, bounds: Bounds) -> None:
    limit = bounds.limits.max_records
    if count > limit:
        detail = f"{count} records, over the limit of {limit} (ingest.max_records)"
        raise DecodeError(TOO_MANY_RECORDS, detail)


def _record(record: Any) -> dict[str, Any] | None:
    """One resource-log record or data-export row -> model fields; None for categories and
    tables other than run status."""
    if not isinstance(record, dict):
        raise _schema(f"not an object but a JSON {_kind(record)}")
    category = _find(record, "category")
    if category is _MISSING and _is_table_row(record):
        return _row(record)
    if not isinstance(category, str):
        raise _schema("category: missing or not a string (and no Type: not a table row)")
    if category != RUN_CATEGORY and category.lower() != RUN_CATEGORY.lower():
        return None
    props = _find(record, "properties")
    if props is _MISSING or props is None:
        props = {}
    elif isinstance(props, str):  # Azure sends the bag both as an object and as JSON text
        props = _object_text(props, "properties")
    if not isinstance(props, dict):
        raise _schema(f"properties: a JSON {_kind(props)}, not an object")
    fields = _columns(props, _COLUMNS)
    fields.update(_columns(record, _RECORD_KEYS))  # the record's own keys win over the bag
    if not fields.get("WorkspaceName"):
        _fill_workspace(fields, _find(record, "resourceId"))
    return fields


def _row(row: Any) -> dict[str, Any] | None:
    """One Log Analytics row -> model fields; None for rows of other tables (`Type`). A row
    without a WorkspaceName (a query may project it away) takes it from `_ResourceId`."""
    if isinstance(row, log_analytics.BadRow):
        raise _schema(row.detail)
    if not isinstance(row, dict):
        raise _schema(f"not an object but a JSON {_kind(row)}")
    if _other_table(row):
        return None
    fields = _columns(row, _COLUMNS)
    if not fields.get("WorkspaceName"):
        _fill_workspace(fields, _find(row, "_ResourceId"))
    return fields


def _is_table_row(record: dict[str, Any]) -> bool:
    """A Log Analytics row carries its table's name in `Type`; diagnostic records never do."""
    return _find(record, "category") is _MISSING and isinstance(_find(record, "Type"), str)


def _is_row(item: dict[str, Any]) -> bool:
    return any(key.lower() in _ROW_KEYS for key in item)


def _other_table(row: dict[str, Any]) -> bool:
    table = _find(row, "Type")
    return isinstance(table, str) and table.lower() != log_analytics.TABLE.lower()


def _run_event_type(event: dict[str, Any], type_key: str) -> str | None:
    """The event's type if it is RunStatusChanged (in any case), None for other types."""
    event_type = _find(event, type_key)
    if not isinstance(event_type, str):
        raise _schema(f"{type_key}: missing or not a string")
    if event_type != RUN_EVENT_TYPE and event_type.lower() != RUN_EVENT_TYPE.lower():
        return None
    return event_type


def _grid_event(event: dict[str, Any], *, cloud: bool) -> dict[str, Any] | None:
    """One Event Grid or CloudEvents event -> model fields; None for other event types."""
    type_key, time_key, source_key = _GRID_KEYS[cloud]
    event_type = _run_event_type(event, type_key)
    if event_type is None:
        return None
    data = _find(event, "data")
    if isinstance(data, str):  # CloudEvents may carry JSON data as text
        data = _object_text(data, "data")
    if not isinstance(data, dict):
        raise _schema(f"data: {'missing' if data is _MISSING else 'not an object'}")
    fields = _columns(data, _DATA_KEYS)
    time = _find(event, time_key)
    if time is not _MISSING:
        fields["TimeGenerated"] = time
    fields["OperationName"] = event_type
    event_id = _find(event, "id")
    if event_id is not _MISSING:
        fields["CorrelationId"] = event_id
    if not fields.get("WorkspaceName"):
        _fill_workspace(fields, _find(event, source_key))
    status = fields.get("Status")
    failed = isinstance(status, str) and status.strip().lower() == "failed"
    fields["Level"] = "Error" if failed else "Informational"
    return fields


def _grid_kind(item: Any) -> bool | None:
    """True for CloudEvents, False for Event Grid schema, None for anything else."""
    if not isinstance(item, dict):
        return None
    if _find(item, "specversion") is not _MISSING:
        return True
    return False if _find(item, "eventType") is not _MISSING else None


def _find(obj: dict[str, Any], key: str) -> Any:
    """obj[key] matched case-insensitively, or _MISSING; Azure's own spelling is tried first."""
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        lowered = key.lower()
        value = next((v for k, v in obj.items() if k.lower() == lowered), _MISSING)
    return value


def _columns(source: dict[str, Any], names: dict[str, str | None]) -> dict[str, Any]:
    """Keys -> model columns, case-insensitively (a clash between spellings: the last wins)."""
    return {
        column: value
        for key, value in source.items()
        if (column := names.get(key.lower())) is not None
    }


def _azure_values(fields: dict[str, Any], limits: IngestLimits) -> bool:
    """Azure's spellings of values -> the model's; says whether anything changed. Tried only
    after a validation failure, since well-formed Azure events never need it."""
    changed = False
    for bag in ("Tags", "Properties"):
        if isinstance(fields.get(bag), str):
            fields[bag] = _object_text(fields[bag], bag)
            changed = True
    for column in _TEXT_COLUMNS:  # as Log Analytics stores JSON values in a string column
        value = fields.get(column)
        if value is not None and not isinstance(value, str):
            try:
                fields[column] = json_text(value, limits.max_depth, limits.max_text_chars)
            except PydanticCustomError as exc:
                raise DecodeError(exc.type, _clip(f"{column}: {exc.message()}")) from None
            changed = True
    level = fields.get("Level")
    if isinstance(level, str) and level.strip().isdigit():
        level = int(level)
    if isinstance(level, int) and not isinstance(level, bool) and level in _NUMERIC_LEVELS:
        fields["Level"] = _NUMERIC_LEVELS[level]
        changed = True
    return changed


def _fill_workspace(fields: dict[str, Any], resource_id: Any) -> None:
    """WorkspaceName from the last `/workspaces/<name>` of an Azure resource id."""
    if not isinstance(resource_id, str):
        return
    parts = resource_id.split("/")
    for index in range(len(parts) - 2, -1, -1):
        if parts[index].lower() == "workspaces" and parts[index + 1]:
            fields["WorkspaceName"] = parts[index + 1]
            return


def _object_text(text: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise _schema(f"{what}: a string that is not a JSON object")
    return value


def _validate(fields: dict[str, Any], bounds: Bounds, size: int, *, azure: bool) -> RunStatusEvent:
    if "" in fields.values():  # Kusto's null: a root run's ParentRunId is "", not a parent
        for column in [column for column, value in fields.items() if value == ""]:
            del fields[column]
    try:
        event = _VALIDATE(fields, context=bounds)
    except ValidationError as exc:
        if azure and _azure_values(fields, bounds.limits):
            return _validate(fields, bounds, size, azure=False)
        raise DecodeError(_reason(exc), _clip(_explain(exc))) from None
    return _admit_event(event, bounds, size)


def _admit_event(event: RunStatusEvent, bounds: Bounds, size: int) -> RunStatusEvent:
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
        _admit_sizes(event.__dict__, _TEXT_COLUMNS, bags, bounds, size)
    return event


def _admit_update(update: RunUpdate, bounds: Bounds, size: int) -> RunUpdate:
    """`_admit_event` for run updates: the same time window and limits."""
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


def _schema(detail: str) -> DecodeError:
    return DecodeError("schema", _clip(detail))


def _reason(exc: ValidationError) -> str:
    """A limit's own error type (a time UTC cannot hold, a value nested too deep) names the
    dead letter; anything else pydantic refuses is a schema error."""
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        if err["type"] in LIMIT_REASONS:
            return err["type"]
    return "schema"


def _explain(exc: ValidationError) -> str:
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


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
