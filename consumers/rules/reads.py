"""What of an event a rule reads, so that state kept per run can keep just that.

The run tracker holds the latest event of every run that has not ended. Tags and
properties are free-form and can be large (megabytes), so it keeps the identity columns
every kind uses, plus what the rules' conditions read: the columns a `where:` names and,
for `tags.KEY` / `properties.KEY`, only those keys. The analysis walks the compiled
JMESPath syntax tree and errs on the side of keeping: an expression that may look at the
whole event (`@`, `*`, `keys(tags)`, a tag reached other than by `tags.KEY`) keeps it whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from consumers.model.events import RunStatusEvent

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode

LABELS = ("Tags", "Properties")

# Kept for every tracked run: what the kinds, the alert and the noise control read.
IDENTITY = frozenset(
    {
        "TimeGenerated",
        "RunId",
        "Status",
        "ParentRunId",
        "RootRunId",
        "ExperimentName",
        "ExperimentId",
        "WorkspaceName",
        "WorkspaceId",
        "RunType",
        "TriggeringUserName",
        "Level",
        "cause",  # a label of every alert (consumers/model/labels.py), and short
    }
)
DROPPABLE = tuple(c for c in RunStatusEvent.model_fields if c not in IDENTITY)

# Children of these nodes after the first are evaluated against what the first produced,
# not against the event; their field names are keys of a value, not columns.
_DERIVED_AFTER_FIRST = frozenset(
    {"subexpression", "pipe", "projection", "value_projection", "filter_projection"}
)
_SAME_CONTEXT = frozenset(
    {
        "index_expression",
        "flatten",
        "function_expression",
        "comparator",
        "and_expression",
        "or_expression",
        "not_expression",
        "multi_select_list",
        "multi_select_dict",
        "key_val_pair",
    }
)
_NOTHING = frozenset({"literal", "index", "slice"})


@dataclass(frozen=True, slots=True)
class Reads:
    """Columns read whole, and keys read of Tags / Properties. `everything`: keep it all."""

    everything: bool = False
    columns: frozenset[str] = frozenset()
    keys: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __or__(self, other: Reads) -> Reads:
        keys = {c: self.keys.get(c, frozenset()) | other.keys.get(c, frozenset()) for c in LABELS}
        return Reads(
            self.everything or other.everything,
            self.columns | other.columns,
            {c: k for c, k in keys.items() if k},
        )

    def kept(self) -> frozenset[str] | None:
        """The columns `cut` keeps anything of (None: all): what a loader need not read."""
        if self.everything:
            return None
        return self.columns | {c for c in LABELS if self.keys.get(c)}

    def cut(self, event: RunStatusEvent) -> RunStatusEvent:
        """`event` with only what is read: unread columns None, unread tags and properties
        left out. The same object when nothing would be dropped."""
        if self.everything:
            return event
        update: dict[str, Any] = {}
        for column in DROPPABLE:
            if column in self.columns:
                continue
            value = getattr(event, column)
            if column in LABELS:
                kept = {k: value[k] for k in self.keys.get(column, ()) if k in value}
                if len(kept) != len(value):
                    update[column] = kept
            elif value is not None:
                update[column] = None
        return event.model_copy(update=update) if update else event


def reads_of(where: _TreeNode | None, aliases: Mapping[str, str]) -> Reads:
    """What a compiled `where:` expression may read (`aliases`: lower-case names -> columns)."""
    if where is None:
        return Reads()
    found = _Found(aliases)
    found.visit(where, root=True)
    return found.reads()


def union(parts: Iterable[Reads]) -> Reads:
    total = Reads()
    for part in parts:
        total = total | part
    return total


class _Found:
    def __init__(self, aliases: Mapping[str, str]) -> None:
        self.aliases = aliases
        self.everything = False
        self.columns: set[str] = set()
        self.keys: dict[str, set[str]] = {c: set() for c in LABELS}

    def reads(self) -> Reads:
        return Reads(
            self.everything,
            frozenset(self.columns),
            {c: frozenset(k) for c, k in self.keys.items() if k},
        )

    def column(self, name: str) -> str:
        return self.aliases.get(name, name)

    def visit(self, node: Any, *, root: bool) -> None:
        kind = node.get("type")
        children = node.get("children", [])
        if kind == "field":
            if root:
                self.columns.add(self.column(node["value"]))
        elif kind in ("current", "identity"):
            if root:
                self.everything = True  # the event itself: whatever it does with it
        elif kind == "expref":
            for child in children:
                self.visit(child, root=False)
        elif kind in _DERIVED_AFTER_FIRST:
            first, *rest = children
            label = self._label_key(kind, first, rest) if root else None
            if label is not None:
                self.keys[label[0]].add(label[1])
            else:
                self.visit(first, root=root)
            for child in rest:
                self.visit(child, root=False)
        elif kind in _SAME_CONTEXT:
            for child in children:
                self.visit(child, root=root)
        elif kind not in _NOTHING:
            self.everything = True  # a node this walk does not know: keep it all

    def _label_key(self, kind: str, first: Any, rest: list[Any]) -> tuple[str, str] | None:
        """`tags.KEY...` (a subexpression from the event's Tags to a field): one key read."""
        if kind != "subexpression" or first.get("type") != "field" or not rest:
            return None
        column = self.column(first["value"])
        if column not in LABELS or rest[0].get("type") != "field":
            return None
        return column, rest[0]["value"]
