"""The one place the console learns why a run failed.

The cause is the one ingest stored with the failed event (`events.cause`, the table in
force when it arrived); the exception and frame shown beside it come from the classifier
(consumers/model/causes.py) applied to the stored Message, which also names the cause of events
stored before the column existed. FAILURE_COLUMNS is what a query of failed events selects
for it, failure_cause() the cause of one such row.

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

from consumers.config.settings import shipped
from consumers.model.causes import HEAD, TAIL, Cause, CauseTable, load_causes, table_files
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
    events.c.cause,
)


def cause_table(rules_dir: Path) -> CauseTable:
    """The table ingest uses (the shipped one, the user's `causes.yaml` beside their rules
    tried first); without a shipped table (an installed package whose rules live elsewhere),
    every failure stored without a cause is `unknown`, said once in the log. A table that
    exists but is broken stops start-up, as a rule does."""
    path, extra = table_files(shipped("alert_rules"), rules_dir)
    if path.is_file():
        return load_causes(path, extra)
    if extra is not None:
        return load_causes(extra)
    log.warning("console: no cause table found: failures stored without a cause show as unknown")
    return CauseTable.of([])


def failure_message(row: Any) -> str | None:
    """The examined part of a row's message (FAILURE_COLUMNS)."""
    head: str | None = row.message_head
    if head is None or row.message_tail is None:
        return head
    return f"{head[:HEAD]}\n...\n{row.message_tail}"


def failure_cause(table: CauseTable, row: Any) -> Cause:
    """The cause of one failed event, from a row holding FAILURE_COLUMNS: the stored verdict
    when there is one, with the exception and frame read from the message."""
    found = table.classify(failure_message(row), row.ResultType, row.ResultSignature)
    stored: str | None = row.cause
    if stored is None or stored == found.name:
        return found
    return Cause(stored, found.exception, found.frame, found.user_frame)


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
