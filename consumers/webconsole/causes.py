"""The one place the console learns why a run failed.

Today: the pure classifier (consumers/causes.py) applied to the failed event's stored
Message, ResultType and ResultSignature. When events carry a stored `cause` column, these
two names change and nothing else: FAILURE_COLUMNS (what a query of failed events selects
for it) and failure_cause() (the cause of one such row).

The message is read as the classifier looks at it, its first HEAD and last TAIL characters,
so a 1 MB log line costs a page no more than a 1 KB one; and a failed event never changes,
so its cause is remembered (FailureCauses), and a page classifies only the new failures.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sqlalchemy import case, func

from consumers.causes import HEAD, TAIL, Cause, CauseTable, load_causes
from consumers.settings import shipped
from consumers.store.schema import events

log = logging.getLogger(__name__)
_LENGTH = func.length(events.c.Message)
FAILURE_COLUMNS = (
    func.substr(events.c.Message, 1, HEAD + TAIL).label("message_head"),
    case((_LENGTH > HEAD + TAIL, func.substr(events.c.Message, _LENGTH - TAIL + 1))).label(
        "message_tail"
    ),
    events.c.ResultType,
    events.c.ResultSignature,
)


def cause_table(rules_dir: Path) -> CauseTable:
    """The rule directory's cause table when it has one, else the shipped defaults; with
    neither (an installed package whose rules live elsewhere), every failure is `unknown`,
    said once in the log. A table that exists but is broken stops start-up, as a rule does."""
    for path in (
        rules_dir / "causes" / "default.yaml",
        shipped("alert_rules") / "causes" / "default.yaml",
    ):
        if path.is_file():
            return load_causes(path)
    log.warning("console: no cause table in %s/causes/: every failure shows as unknown", rules_dir)
    return CauseTable.of([])


def failure_message(row: Any) -> str | None:
    """The examined part of a row's message (FAILURE_COLUMNS)."""
    head: str | None = row.message_head
    if head is None or row.message_tail is None:
        return head
    return f"{head[:HEAD]}\n...\n{row.message_tail}"


def failure_cause(table: CauseTable, row: Any) -> Cause:
    """The cause of one failed event, from a row holding FAILURE_COLUMNS."""
    return table.classify(failure_message(row), row.ResultType, row.ResultSignature)


class FailureCauses:
    """failure_cause() with the newest `size` answers remembered by (RunId, TimeGenerated):
    the failures page reads the same few hundred failed events on every load."""

    def __init__(self, table: CauseTable, size: int = 4096) -> None:
        self.table = table
        self.size = size
        self._known: OrderedDict[tuple[Any, Any], Cause] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, row: Any) -> Cause:
        key = (row.RunId, row.TimeGenerated)
        with self._lock:
            cause = self._known.get(key)
            if cause is not None:
                self._known.move_to_end(key)
                return cause
        cause = failure_cause(self.table, row)
        with self._lock:
            self._known[key] = cause
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        return cause
