"""Azure's shapes of a run-status event -> the model's columns: resource-log records (and
workspace data-export rows), Log Analytics rows, Event Grid and CloudEvents events. Keys
are matched case-insensitively, Azure's spellings of values (bags as JSON text, numeric
levels, JSON in text columns) are read as the model's, and WorkspaceName falls back to the
resource id. Called by `decoding` once it knows the shape."""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic_core import PydanticCustomError

from consumers.ingest import log_analytics
from consumers.ingest.admission import TEXT_COLUMNS, clip, json_kind, schema_error
from consumers.model.errors import DecodeError
from consumers.model.events import DERIVED_FIELDS, RunStatusEvent
from consumers.model.limits import (
    IngestLimits,
    json_text,
)

RUN_CATEGORY = "AmlRunStatusChangedEvent"
RUN_EVENT_TYPE = "Microsoft.MachineLearningServices.RunStatusChanged"

FIELDS = frozenset(RunStatusEvent.model_fields)
COLUMNS: dict[str, str | None] = {
    name.lower(): name for name in FIELDS if name not in DERIVED_FIELDS
}
COLUMNS["_resourceid"] = "ResourceId"  # a Log Analytics row's name for it
REQUIRED = ("timegenerated", "runid", "status")
# Per-format renames; None drops a key that only looks like a column (the record's property bag).
_RECORD_KEYS: dict[str, str | None] = {**COLUMNS, "time": "TimeGenerated", "properties": None}
_DATA_KEYS: dict[str, str | None] = {
    **COLUMNS,
    "runstatus": "Status",
    "runtags": "Tags",
    "runproperties": "Properties",
}
# (type, time, workspace id) attribute names of Event Grid (False) and CloudEvents (True).
_GRID_KEYS = {False: ("eventType", "eventTime", "topic"), True: ("type", "time", "source")}
_NUMERIC_LEVELS = {1: "Critical", 2: "Error", 3: "Warning", 4: "Informational"}  # as Azure's
_ROW_KEYS = frozenset(REQUIRED)
_MISSING: Any = object()
# /subscriptions/<id>/resourceGroups/<rg>/providers/<namespace>/<type>/<name>[/...], any case
_ARM_ID = re.compile(
    r"/subscriptions/[^/\s]{1,100}/resourcegroups/[^/\s]{1,100}/providers/[^/\s]{1,200}"
    r"/[^/\s]{1,200}/[^/\s]{1,260}",
    re.IGNORECASE,
)


def from_record(record: Any) -> dict[str, Any] | None:
    """One resource-log record or data-export row -> model fields; None for categories and
    tables other than run status."""
    if not isinstance(record, dict):
        raise schema_error(f"not an object but a JSON {json_kind(record)}")
    category = _find(record, "category")
    if category is _MISSING and is_table_row(record):
        return from_row(record)
    if not isinstance(category, str):
        raise schema_error("category: missing or not a string (and no Type: not a table row)")
    if category != RUN_CATEGORY and category.lower() != RUN_CATEGORY.lower():
        return None
    props = _find(record, "properties")
    if props is _MISSING or props is None:
        props = {}
    elif isinstance(props, str):  # Azure sends the bag both as an object and as JSON text
        props = _object_text(props, "properties")
    if not isinstance(props, dict):
        raise schema_error(f"properties: a JSON {json_kind(props)}, not an object")
    fields = to_columns(props, COLUMNS)
    fields.update(to_columns(record, _RECORD_KEYS))  # the record's own keys win over the bag
    _resource(fields, _find(record, "resourceId"))
    return fields


def from_row(row: Any) -> dict[str, Any] | None:
    """One Log Analytics row -> model fields; None for rows of other tables (`Type`). A row
    without a WorkspaceName (a query may project it away) takes it from `_ResourceId`."""
    if isinstance(row, log_analytics.BadRow):
        raise schema_error(row.detail)
    if not isinstance(row, dict):
        raise schema_error(f"not an object but a JSON {json_kind(row)}")
    if other_table(row):
        return None
    fields = to_columns(row, COLUMNS)
    _resource(fields, _find(row, "_ResourceId"))
    return fields


def is_table_row(record: dict[str, Any]) -> bool:
    """A Log Analytics row carries its table's name in `Type`; diagnostic records never do."""
    return _find(record, "category") is _MISSING and isinstance(_find(record, "Type"), str)


def is_row(item: dict[str, Any]) -> bool:
    return any(key.lower() in _ROW_KEYS for key in item)


def other_table(row: dict[str, Any]) -> bool:
    table = _find(row, "Type")
    return isinstance(table, str) and table.lower() != log_analytics.TABLE.lower()


def run_event_type(event: dict[str, Any], type_key: str) -> str | None:
    """The event's type if it is RunStatusChanged (in any case), None for other types."""
    event_type = _find(event, type_key)
    if not isinstance(event_type, str):
        raise schema_error(f"{type_key}: missing or not a string")
    if event_type != RUN_EVENT_TYPE and event_type.lower() != RUN_EVENT_TYPE.lower():
        return None
    return event_type


def from_grid_event(event: dict[str, Any], *, cloud: bool) -> dict[str, Any] | None:
    """One Event Grid or CloudEvents event -> model fields; None for other event types."""
    type_key, time_key, source_key = _GRID_KEYS[cloud]
    event_type = run_event_type(event, type_key)
    if event_type is None:
        return None
    data = _find(event, "data")
    if isinstance(data, str):  # CloudEvents may carry JSON data as text
        data = _object_text(data, "data")
    if not isinstance(data, dict):
        raise schema_error(f"data: {'missing' if data is _MISSING else 'not an object'}")
    fields = to_columns(data, _DATA_KEYS)
    time = _find(event, time_key)
    if time is not _MISSING:
        fields["TimeGenerated"] = time
    fields["OperationName"] = event_type
    event_id = _find(event, "id")
    if event_id is not _MISSING:
        fields["CorrelationId"] = event_id
    _resource(fields, _find(event, source_key))
    status = fields.get("Status")
    failed = isinstance(status, str) and status.strip().lower() == "failed"
    fields["Level"] = "Error" if failed else "Informational"
    return fields


def grid_kind(item: Any) -> bool | None:
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


def to_columns(source: dict[str, Any], names: dict[str, str | None]) -> dict[str, Any]:
    """Keys -> model columns, case-insensitively (a clash between spellings: the last wins)."""
    return {
        column: value
        for key, value in source.items()
        if (column := names.get(key.lower())) is not None
    }


def azure_values(fields: dict[str, Any], limits: IngestLimits) -> bool:
    """Azure's spellings of values -> the model's; says whether anything changed. Tried only
    after a validation failure, since well-formed Azure events never need it."""
    changed = False
    for bag in ("Tags", "Properties"):
        if isinstance(fields.get(bag), str):
            fields[bag] = _object_text(fields[bag], bag)
            changed = True
    for column in TEXT_COLUMNS:  # as Log Analytics stores JSON values in a string column
        value = fields.get(column)
        if value is not None and not isinstance(value, str):
            try:
                fields[column] = json_text(value, limits.max_depth, limits.max_text_chars)
            except PydanticCustomError as exc:
                raise DecodeError(exc.type, clip(f"{column}: {exc.message()}")) from None
            changed = True
    level = fields.get("Level")
    if isinstance(level, str) and level.strip().isdigit():
        level = int(level)
    if isinstance(level, int) and not isinstance(level, bool) and level in _NUMERIC_LEVELS:
        fields["Level"] = _NUMERIC_LEVELS[level]
        changed = True
    return changed


def _resource(fields: dict[str, Any], resource_id: Any) -> None:
    """The envelope's ARM ID (resource log `resourceId`, Event Grid `topic`, CloudEvents
    `source`, Log Analytics `_ResourceId`) -> ResourceId, unless the event gives its own, and
    WorkspaceName from it when the event has none. Only what reads as an ARM ID is kept: a
    CloudEvents `source` may be any URI reference."""
    if not isinstance(resource_id, str):
        return
    if not fields.get("ResourceId") and _ARM_ID.match(resource_id):
        fields["ResourceId"] = resource_id
    if not fields.get("WorkspaceName"):
        _fill_workspace(fields, resource_id)


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
        raise schema_error(f"{what}: a string that is not a JSON object")
    return value
