"""The lower-case names for the event columns that run queries and Alertmanager-style
matchers spell that way (`workspace` for WorkspaceName), in one table: a rule's `where:`
sees each alias beside the column, and an alert's labels carry the scalar ones
(`tags.<name>` stands for a tag there, so the map columns are not labels). `cause` (why a
failed run failed) is already lower case: its alias is itself."""

from __future__ import annotations

ALIASES = {
    "run_id": "RunId",
    "status": "Status",
    "experiment": "ExperimentName",
    "workspace": "WorkspaceName",
    "run_type": "RunType",
    "user": "TriggeringUserName",
    "parent_run_id": "ParentRunId",
    "root_run_id": "RootRunId",
    "cause": "cause",  # runwatch's own column (consumers/model/causes.py): the same name
    "tags": "Tags",
    "properties": "Properties",
}

MAP_COLUMNS = frozenset({"Tags", "Properties"})

# The aliases whose values are labels (strings), not maps.
LABEL_ALIASES = {alias: column for alias, column in ALIASES.items() if column not in MAP_COLUMNS}
