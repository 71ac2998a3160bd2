"""The one place the console learns why a run failed.

Today: the pure classifier (consumers/causes.py) applied to the failed event's stored
Message, ResultType and ResultSignature. When events carry a stored `cause` column, this
function (and FAILURE_COLUMNS, what the failures query reads for it) is all that changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers.causes import Cause, CauseTable, load_causes
from consumers.settings import shipped
from consumers.store.schema import events

# What the failures query selects so that failure_cause() can answer.
FAILURE_COLUMNS = (events.c.Message, events.c.ResultType, events.c.ResultSignature)


def cause_table(rules_dir: Path) -> CauseTable:
    """The rule directory's cause table when it has one, else the shipped defaults."""
    own = rules_dir / "causes" / "default.yaml"
    return load_causes(own if own.is_file() else shipped("alert_rules") / "causes" / "default.yaml")


def failure_cause(table: CauseTable, row: Any) -> Cause:
    """`row` has the FAILURE_COLUMNS of one failed event."""
    return table.classify(row.Message, row.ResultType, row.ResultSignature)
