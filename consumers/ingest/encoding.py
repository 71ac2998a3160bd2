"""Run events -> the wire formats `decoding.decode` accepts, shaped as Azure sends them.

Used by `runwatch emit --format`, the run simulator, benchmarks and tests. What survives
`decode(encode(event, fmt))` is `ROUND_TRIP[fmt]`:

- native carries every column;
- resource-log carries every column too, except that a missing OperationName comes back as
  `RUN_STATUS_OPERATION` (Azure records always have one);
- event-grid and cloudevents carry only what Azure's RunStatusChanged event has: time, run,
  experiment, workspace (in the topic/source), run type, status, tags and properties. Level comes
  back derived from Status (Failed -> Error, else Informational), OperationName as the event
  type, and CorrelationId as the event id: the event's CorrelationId when it has one, else a
  UUID derived from workspace, run, time and status (so re-encoding gives the same bytes).
- log-analytics is a workspace data export (`{"records": [...]}` of table rows, `Type` for
  `category`): the table's columns only, every one a string and `""` for none, as Kusto keeps
  them. The table has no ExperimentName, ExperimentId, RunType, Tags or Properties column.

ResourceId is the envelope's ARM ID in every Azure format (resourceId, _ResourceId, topic,
source): the event's own when it has one, else one made from the workspace name, so it comes
back equal only when the event had one. The derived columns (`cause`, `cause_detail`) are
ingest's verdict and are never encoded in an Azure format.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from consumers.ingest.azure import RUN_CATEGORY, RUN_EVENT_TYPE
from consumers.ingest.decoding import EventFormat
from consumers.ingest.log_analytics import TABLE
from consumers.model.events import DERIVED_FIELDS, RunStatusEvent

__all__ = ["ROUND_TRIP", "RUN_STATUS_OPERATION", "encode", "encode_many"]

RUN_STATUS_OPERATION = "Microsoft.MachineLearningServices/workspaces/runs/statuschange/write"
SUBSCRIPTION_ID = "5f0c7e2a-3b1d-4c8e-9a6f-2d4b8e1c7a90"
RESOURCE_GROUP = "ml-platform-rg"
LOG_ANALYTICS_WORKSPACE_ID = "a1b2c3d4-0000-4000-8000-00000000ab12"  # a row's TenantId

_ALL = frozenset(RunStatusEvent.model_fields)
_AZURE = _ALL - {"ResourceId", *DERIVED_FIELDS}
_GRID = frozenset(
    {"TimeGenerated", "RunId", "Status", "ExperimentId", "ExperimentName", "WorkspaceName"}
    | {"RunType", "Tags", "Properties"}
)
ROUND_TRIP: dict[EventFormat, frozenset[str]] = {
    EventFormat.NATIVE: _ALL,
    EventFormat.RESOURCE_LOG: _AZURE - {"OperationName"},
    EventFormat.EVENT_GRID: _GRID,
    EventFormat.CLOUDEVENTS: _GRID,
    EventFormat.LOG_ANALYTICS: _AZURE
    - {"ExperimentName", "ExperimentId", "RunType", "Tags", "Properties"},
}
"""Columns that always come back equal; the module docstring says what happens to the rest."""

# Resource-log record keys (top level, camelCase as Azure writes them) and property-bag columns.
_RECORD_KEYS = {
    "ResultType": "resultType",
    "ResultSignature": "resultSignature",
    "ResultDescription": "resultDescription",
    "DurationMs": "durationMs",
    "CallerIpAddress": "callerIpAddress",
    "CorrelationId": "correlationId",
    "Identity": "identity",
    "Location": "location",
}
# The table's columns a data export carries, besides the run's own (tests/samples/azure/).
_ROW_COLUMNS = tuple(sorted(ROUND_TRIP[EventFormat.LOG_ANALYTICS] - {"TimeGenerated"}))
_BAG_COLUMNS = tuple(
    name
    for name in RunStatusEvent.model_fields
    if name not in _RECORD_KEYS
    and name not in {"TimeGenerated", "OperationName", "Level", "ResourceId", *DERIVED_FIELDS}
)


def encode(
    event: RunStatusEvent,
    fmt: EventFormat,
    *,
    subscription_id: str = SUBSCRIPTION_ID,
    resource_group: str = RESOURCE_GROUP,
) -> bytes:
    """One event as one message: a native object, a one-record envelope or one grid event."""
    if fmt is EventFormat.NATIVE:
        return event.to_json()
    if fmt in (EventFormat.RESOURCE_LOG, EventFormat.LOG_ANALYTICS):
        return encode_many(
            [event], fmt, subscription_id=subscription_id, resource_group=resource_group
        )
    return orjson.dumps(_grid_event(event, fmt, subscription_id, resource_group))


def encode_many(
    events: Sequence[RunStatusEvent],
    fmt: EventFormat,
    *,
    subscription_id: str = SUBSCRIPTION_ID,
    resource_group: str = RESOURCE_GROUP,
) -> bytes:
    """Several events as one message: an envelope of records, or a JSON array of grid events.

    Native has no batch form, so it takes exactly one event (ValueError otherwise).
    """
    if not events:
        raise ValueError("no events to encode")
    if fmt is EventFormat.NATIVE:
        if len(events) > 1:
            raise ValueError(f"the native format carries one event per message, not {len(events)}")
        return events[0].to_json()
    if fmt is EventFormat.RESOURCE_LOG:
        records = [_record(e, subscription_id, resource_group) for e in events]
        return orjson.dumps({"records": records})
    if fmt is EventFormat.LOG_ANALYTICS:
        rows = [_row(e, subscription_id, resource_group) for e in events]
        return orjson.dumps({"records": rows})
    return orjson.dumps([_grid_event(e, fmt, subscription_id, resource_group) for e in events])


def _record(event: RunStatusEvent, subscription_id: str, resource_group: str) -> dict[str, Any]:
    """A diagnostic-settings record: Azure's fixed keys on top, the table's columns in the bag."""
    columns = event.model_dump(mode="json")
    record: dict[str, Any] = {
        "time": _azure_time(event.TimeGenerated),
        "resourceId": event.ResourceId
        or _resource_id(subscription_id, resource_group, event.WorkspaceName).upper(),
        "category": RUN_CATEGORY,
        "operationName": event.OperationName or RUN_STATUS_OPERATION,
        "level": event.Level,
    }
    for column, key in _RECORD_KEYS.items():
        if columns[column] is not None:
            record[key] = columns[column]
    record["properties"] = {
        name: columns[name] for name in _BAG_COLUMNS if columns[name] not in (None, {})
    }
    return record


def _row(event: RunStatusEvent, subscription_id: str, resource_group: str) -> dict[str, Any]:
    """A row of the table as a workspace data export sends it: strings, "" for none."""
    columns = event.model_dump(mode="json")
    row: dict[str, Any] = {name: _kusto(columns[name]) for name in _ROW_COLUMNS}
    resource = (
        event.ResourceId
        or _resource_id(subscription_id, resource_group, event.WorkspaceName).lower()
    )
    row |= {
        "TimeGenerated": _azure_time(event.TimeGenerated),
        "OperationVersion": "",
        "SourceSystem": "Azure",
        "TenantId": LOG_ANALYTICS_WORKSPACE_ID,
        "Type": TABLE,
        "_ResourceId": resource,
        "_SubscriptionId": subscription_id,
    }
    return row


def _kusto(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _grid_event(
    event: RunStatusEvent, fmt: EventFormat, subscription_id: str, resource_group: str
) -> dict[str, Any]:
    """Microsoft.MachineLearningServices.RunStatusChanged, in Event Grid or CloudEvents schema."""
    time = _azure_time(event.TimeGenerated)
    source = event.ResourceId or _resource_id(subscription_id, resource_group, event.WorkspaceName)
    subject = f"experiments/{event.ExperimentId or event.ExperimentName or '-'}/runs/{event.RunId}"
    derived = uuid.uuid5(uuid.NAMESPACE_URL, f"{source}/{subject}/{time}/{event.Status}")
    event_id = event.CorrelationId or str(derived)
    data = {
        "experimentId": event.ExperimentId,
        "experimentName": event.ExperimentName,
        "runId": event.RunId,
        "runType": event.RunType,
        "runTags": event.Tags,
        "runProperties": event.Properties,
        "runStatus": event.Status,
    }
    if fmt is EventFormat.CLOUDEVENTS:
        return {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "subject": subject,
            "type": RUN_EVENT_TYPE,
            "time": time,
            "datacontenttype": "application/json",
            "data": data,
        }
    return {
        "id": event_id,
        "topic": source,
        "subject": subject,
        "eventType": RUN_EVENT_TYPE,
        "eventTime": time,
        "data": data,
        "dataVersion": "2",
        "metadataVersion": "1",
    }


def _resource_id(subscription_id: str, resource_group: str, workspace: str | None) -> str:
    """The workspace's ARM id (diagnostic records upper-case it, Event Grid does not). Without
    a workspace it stops at the resource group, so that none comes back on decode."""
    rid = f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
    if workspace:
        rid += f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
    return rid


def _azure_time(value: datetime) -> str:
    """Azure's 7-digit fractional seconds and a Z; the 7th digit is always 0 (microseconds)."""
    return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond:06d}0Z"
