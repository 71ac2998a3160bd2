"""Speaking Azure Monitor's common alert schema (the `azure-common` webhook format) as a log
search alert on the `AmlRunStatusChangedEvent` table: what templates/webhook/azure-common
.json.j2 needs beyond plain Jinja, as template globals and filters.

Search results are a Log Analytics query result: `columns` as `{name, type}` objects, `rows`
as arrays in column order, typed as the table reference types them (every column `string`
but `TimeGenerated` `datetime`; Kusto strings are never null, so a missing value is `""`);
the extension columns runwatch adds (Tags, Properties) are `dynamic`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

TABLE = "AmlRunStatusChangedEvent"
# Azure's names for the severities, as in SeverityDescription.
SEVERITY_DESCRIPTIONS = {
    0: "Critical",
    1: "Error",
    2: "Warning",
    3: "Informational",
    4: "Verbose",
}
_TYPES = {"TimeGenerated": "datetime", "Tags": "dynamic", "Properties": "dynamic"}


def _cell(column: str, value: Any) -> Any:
    kind = _TYPES.get(column, "string")
    if kind == "dynamic":
        return value if value is not None else {}
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def search_table(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One `PrimaryResult` table of these events (the columns of the first one)."""
    rows = list(events)
    names = list(rows[0]) if rows else ["TimeGenerated"]
    return {
        "name": "PrimaryResult",
        "columns": [{"name": name, "type": _TYPES.get(name, "string")} for name in names],
        "rows": [[_cell(name, row.get(name)) for name in names] for row in rows],
    }


def _column(name: str) -> str:
    head, dot, key = name.partition(".")
    if dot and head in ("Tags", "Properties"):
        return f"tostring({head}[{_kql_string(key)}])"
    return name


def _kql_string(value: Any) -> str:
    return orjson.dumps(str(value)).decode()  # a JSON string is a valid Kusto string literal


def search_query(alert: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """A query that finds what the alert is about: the run's event (per-event alerts), or
    the group's events (stateful alerts)."""
    if alert.get("kind", "event") == "event":
        where = {"RunId": event["RunId"], "Status": event["Status"]}
    else:
        where = dict(alert.get("group") or {"RunId": event["RunId"]})
    terms = " and ".join(f"{_column(k)} == {_kql_string(v)}" for k, v in where.items())
    return f"{TABLE} | where {terms}"


def dimensions(alert: Mapping[str, Any], event: Mapping[str, Any]) -> list[dict[str, str]]:
    """A per-event alert's run, status and (a failed run's) cause; a stateful alert's group."""
    if alert.get("kind", "event") == "event":
        values = {"RunId": event["RunId"], "Status": event["Status"]}
        if event.get("cause"):
            values["cause"] = event["cause"]
    else:
        values = dict(alert.get("group") or {})
    return [{"name": str(k), "value": str(v)} for k, v in values.items()]


def custom_properties(alert: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, str]:
    """customProperties: the rule's labels and annotations, and the event's cause (with the
    exception and frame, when known) unless a label already says `cause`."""
    properties = {str(k): str(v) for k, v in alert.get("labels", {}).items()}
    properties |= {str(k): str(v) for k, v in alert.get("annotations", {}).items()}
    if event.get("cause"):
        properties.setdefault("cause", str(event["cause"]))
        if event.get("cause_detail"):
            properties.setdefault("cause_detail", str(event["cause_detail"]))
    return properties


def minutes_between(start: str, end: str) -> str:
    span = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return str(max(round(span.total_seconds() / 60), 0))


def azure_time(value: str | datetime | None) -> str:
    """'2026-11-22T21:03:04.123Z' -> '11/22/2026 9:03:04 PM', the form of Azure's log search
    alert context (SearchIntervalStartTimeUtc in the published samples)."""
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S} {half}"
