"""The run API's filters for reads (statuses, tags, properties), applied to run records.

Pure: the records come from `reads`, the filters from the caller's arguments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from consumers.model.events import parse_status

# Tags/properties filters as the run API takes them: "key" (has it), ["k1", "k2"] (has
# all), or {"key": "value"} ({"key": None} for "has it, whatever the value").
LabelFilter = str | Iterable[str] | Mapping[str, str | None] | None


def status_names(statuses: str | Iterable[str] | None) -> tuple[str, ...]:
    """ "Failed", ["Failed", "Canceled"] or None -> canonical names; a typo is a ValueError."""
    if statuses is None:
        return ()
    items = [statuses] if isinstance(statuses, str) else list(statuses)
    return tuple(dict.fromkeys(parse_status(s) for s in items))


def _label_pairs(wanted: LabelFilter) -> list[tuple[str, str | None]]:
    if wanted is None:
        return []
    if isinstance(wanted, str):
        return [(wanted, None)]
    if isinstance(wanted, Mapping):
        return [(str(k), None if v is None else str(v)) for k, v in wanted.items()]
    return [(str(k), None) for k in wanted]


def matches(
    record: Mapping[str, Any],
    *,
    tags: LabelFilter = None,
    properties: LabelFilter = None,
    statuses: tuple[str, ...] = (),
) -> bool:
    if statuses and record["status"] not in statuses:
        return False
    for labels, wanted in ((record["tags"], tags), (record["properties"], properties)):
        for key, value in _label_pairs(wanted):
            if key not in labels or (value is not None and labels[key] != value):
                return False
    return True
