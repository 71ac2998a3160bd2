"""Rows of the Log Analytics table `AmlRunStatusChangedEvent`, in the shapes Azure hands out.

Three shapes carry the same rows: a query API response (`{"tables": [{"columns": [{"name",
"type"}], "rows": [[...]]}]}`), a row as an object (what SDKs, `az monitor log-analytics query`
and JSON exports give) and a workspace data export (`{"records": [...]}` whose rows carry
`Type`, the table's name, where diagnostic records carry `category`). Kusto strings are never
null, so a row says "no value" with `""` in every column (decoding reads it as null); numbers
such as `DurationMs` are strings. The row-to-columns mapping is decoding's; this module only
takes the query response apart, so that decoding handles every shape alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumers.model.errors import DecodeError

__all__ = ["TABLE", "BadRow", "query_rows", "row_count"]

TABLE = "AmlRunStatusChangedEvent"  # the table's name, as a row's `Type` column carries it


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that does not fit its table's columns: rejected alone, its neighbours go on."""

    detail: str


def row_count(tables: Any) -> int:
    """The rows of a query response's `tables`, counted before any is built (the record limit
    is checked on this), the shape checked on the way."""
    if not isinstance(tables, list):
        raise _shape('"tables" is not an array')
    total = 0
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            raise _shape(f"tables[{index}] is not an object")
        rows = table.get("rows")
        if not isinstance(rows, list):
            raise _shape(f"tables[{index}].rows is missing or not an array")
        total += len(rows)
    return total


def query_rows(tables: list[dict[str, Any]]) -> list[dict[str, Any] | BadRow]:
    """Every row of every table as an object keyed by its column names (call `row_count`
    first: it checks the shape this relies on)."""
    out: list[dict[str, Any] | BadRow] = []
    for index, table in enumerate(tables):
        names = _column_names(table.get("columns"), index)
        for row in table["rows"]:
            if isinstance(row, list) and len(row) == len(names):
                out.append(dict(zip(names, row, strict=True)))
            elif isinstance(row, list):
                out.append(BadRow(f"{len(row)} values for {len(names)} columns"))
            else:
                out.append(BadRow("not an array of values"))
    return out


def _column_names(columns: Any, index: int) -> list[str]:
    """`{"name": ..., "type": ...}` objects as the API documents them; bare strings too, as
    the older log search alert payloads carry them."""
    if not isinstance(columns, list):
        raise _shape(f"tables[{index}].columns is missing or not an array")
    names: list[str] = []
    for column in columns:
        name = column.get("name") if isinstance(column, dict) else column
        if not isinstance(name, str):
            raise _shape(f"tables[{index}].columns: a column without a name")
        names.append(name)
    return names


def _shape(detail: str) -> DecodeError:
    return DecodeError("unknown_shape", f"Log Analytics query response: {detail}")
