"""What the CLI prints: aligned plain-text tables for people, indented JSON for scripts.

Everything printed here comes from producers (messages, tags, payload previews), so every
cell is defensive: None, wrong types, wide or control characters must never crash or break
the layout. JSON keeps values verbatim; only the tables clean them (the CLI's output stream
then escapes control characters and masks credentials in both: consumers/cli/console.py).
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import orjson

from consumers.cli.console import sanitize
from consumers.model.events import to_utc
from consumers.store.queries import RunDetail

Output = Literal["table", "json"]
_MAX_CELL = 48
_RUN_COLUMNS = ("RUN ID", "STATUS", "EXPERIMENT", "STARTED", "DURATION", "CAUSE", "TAGS")


def _json(value: Any) -> str:
    return orjson.dumps(
        value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str
    ).decode()


def _check(output: str) -> None:
    if output not in ("table", "json"):
        raise ValueError(f"unknown output format {output!r} (expected table or json)")


def clean(value: Any, limit: int | None = _MAX_CELL) -> str:
    """One table cell: line breaks and tabs (newlines in error messages) become spaces, other
    control and format characters are shown escaped (consumers.cli.console.sanitize: a run id
    cannot drive the terminal), runs of whitespace collapse, long text is cut with "…"."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    # A character is at least one column (bar combining marks): no need to scan megabytes.
    cut = limit is not None and len(text) > 4 * limit
    if limit is not None:
        text = text[: 4 * limit]
    text = " ".join(sanitize(text, cell=True).split()) or "-"
    if limit is None or not (cut or _width(text) > limit):
        return text
    kept, used = [], 0
    for char in text:
        used += _width(char)
        if used > limit - 1:
            break
        kept.append(char)
    return "".join(kept).rstrip() + "…"


def _width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "") -> str:
    body = [list(row) for row in rows]
    widths = [max(_width(cell) for cell in column) for column in zip(header, *body, strict=False)]
    lines = [
        indent + "  ".join(_pad(cell, w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(header), *body]
    ]
    return "\n".join(lines)


def humanize_seconds(seconds: Any) -> str:
    """'45s', '3m 05s', '1h 02m', '2d 03h': precise where it matters, short where it is long."""
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
    ):
        return "-"
    sign, total = ("-", int(-seconds)) if seconds < 0 else ("", int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours:02d}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"


def _when(value: Any) -> str:
    """ISO strings (records) and datetimes (timeline) alike, as 'YYYY-MM-DD HH:MM:SS' UTC."""
    if isinstance(value, datetime):
        return to_utc(value).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str) and value:
        try:
            return to_utc(datetime.fromisoformat(value)).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return clean(value)
    return "-"


def _labels(value: Any) -> str:
    if not isinstance(value, Mapping) or not value:
        return "-"
    return ", ".join(str(k) if v is None else f"{k}={v}" for k, v in value.items())


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else None


def _run_row(record: Any) -> list[str]:
    return [
        clean(_get(record, "runId"), None),
        clean(_get(record, "status")),
        clean(_get(record, "experimentName")),
        _when(_get(record, "startTimeUtc")),
        humanize_seconds(_get(record, "durationSeconds")),
        clean(_get(record, "cause")),
        clean(_labels(_get(record, "tags"))),
    ]


def format_runs(records: Sequence[Mapping[str, Any]], output: Output = "table") -> str:
    _check(output)
    if output == "json":
        return _json(list(records))
    if not records:
        return "No runs found."
    return _table(_RUN_COLUMNS, (_run_row(r) for r in records))


def _timeline_json(detail: RunDetail) -> list[dict[str, Any]]:
    return [
        {
            "status": entry.status,
            "timeUtc": to_utc(entry.time).isoformat().replace("+00:00", "Z"),
            "secondsInState": entry.seconds_in_state,
            "message": entry.message,
        }
        for entry in detail.timeline
    ]


_DETAIL_FIELDS = (
    ("Run ID", "runId"),
    ("Status", "status"),
    ("Cause", "cause"),
    ("Experiment", "experimentName"),
    ("Experiment ID", "experimentId"),
    ("Workspace", "workspaceName"),
    ("Workspace ID", "workspaceId"),
    ("Parent run", "parentRunId"),
    ("Root run", "rootRunId"),
    ("Run type", "runType"),
    ("Triggered by", "triggeringUserName"),
    ("Message", "message"),
)


def format_run_detail(detail: RunDetail, output: Output = "table") -> str:
    _check(output)
    run = detail.run
    if output == "json":
        return _json(
            {"run": run, "timeline": _timeline_json(detail), "children": list(detail.children)}
        )
    fields = [(label, clean(_get(run, key), None)) for label, key in _DETAIL_FIELDS]
    fields += [
        ("Tags", clean(_labels(_get(run, "tags")), None)),
        ("Properties", clean(_labels(_get(run, "properties")), None)),
        ("First seen", _when(_get(run, "firstSeenUtc"))),
        ("Last seen", _when(_get(run, "lastSeenUtc"))),
        ("Started", _when(_get(run, "startTimeUtc"))),
        ("Ended", _when(_get(run, "endTimeUtc"))),
        ("Duration", humanize_seconds(_get(run, "durationSeconds"))),
    ]
    label_width = max(len(label) for label, _ in fields) + 1
    parts = ["\n".join(f"{label + ':':<{label_width}} {value}" for label, value in fields)]
    if detail.timeline:
        timeline_rows = (
            [
                clean(e.status),
                _when(e.time),
                humanize_seconds(e.seconds_in_state),
                "" if e.message is None else clean(e.message, 80),
            ]
            for e in detail.timeline
        )
        header = ("STATUS", "TIME", "IN STATE", "MESSAGE")
        parts.append("Timeline:\n" + _table(header, timeline_rows, "  "))
    else:
        parts.append("Timeline: no events stored")
    if detail.children:
        child_rows = (_run_row(child)[:6] for child in detail.children)
        parts.append(
            f"Children ({len(detail.children)}):\n" + _table(_RUN_COLUMNS[:6], child_rows, "  ")
        )
    else:
        parts.append("Children: none")
    return "\n\n".join(parts)


def format_dead_letters(rows: Sequence[Mapping[str, Any]], output: Output = "table") -> str:
    _check(output)
    if output == "json":
        return _json(list(rows))
    if not rows:
        return "No dead letters."
    table_rows = (
        [
            clean(_get(r, "id")),
            _when(_get(r, "receivedAtUtc")),
            clean(_get(r, "reason"), 24),
            clean(
                f"{_get(r, 'sourceTopic')}[{_get(r, 'sourcePartition')}]@{_get(r, 'sourceOffset')}"
            ),
            clean(_get(r, "payloadBytes")),
            clean(_get(r, "error"), 40),
            clean(_get(r, "payloadPreview"), 40),
        ]
        for r in rows
    )
    header = ("ID", "RECEIVED", "REASON", "SOURCE", "BYTES", "ERROR", "PAYLOAD")
    return _table(header, table_rows)


def cut_note(shown: int, total: int) -> str | None:
    """The line under a table cut by --limit: without it a newcomer reads the first 50 runs
    as all there are."""
    if total <= shown:
        return None
    return f"{shown} of {total} shown; --limit to see more"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Any list as an aligned table, every cell through `clean` (for the CLI's other lists)."""
    return _table(header, ([clean(cell) for cell in row] for row in rows))


_NOTIFICATION_COLUMNS = ("ID", "STATE", "TRIES", "RECEIVER", "RULE", "RUN", "REASON")


def format_notifications(rows: Sequence[Any], output: Output = "table") -> str:
    """The outbox (`runwatch notifications list`): rows are consumers.store.outbox's
    Notification; the run id, rule and reason are producers' or receivers' text."""
    _check(output)
    if output == "json":
        return _json([dataclasses.asdict(row) for row in rows])
    if not rows:
        return "No notifications."
    table_rows = (
        [
            clean(row.id, None),
            clean(row.state),
            clean(row.attempts),
            clean(row.receiver, 24),
            clean(row.rule, 24),
            clean(row.run_id, 40),
            clean(row.reason, 40),
        ]
        for row in rows
    )
    return _table(_NOTIFICATION_COLUMNS, table_rows)
