"""The labels an alert carries, which silences, routes and inhibition rules match
(consumers/model/matchers.py has the matcher syntax)."""

from __future__ import annotations

from consumers.model.alerts import Alert
from consumers.model.labels import LABEL_ALIASES


def alert_labels(alert: Alert) -> dict[str, str]:
    """`rule` (also `alertname`), `severity`, the event's columns (as `workspace` and as
    `WorkspaceName`), `tags.<name>`, a scheduled alert's group values under their names
    (`WorkspaceName`, `Tags.team`; a roll-up's `RootRunId` is its root, so an inhibition
    rule with `equal: [RootRunId]` reaches the root's children), then the rule's own labels
    (which win)."""
    event = alert.event
    labels = {"rule": alert.rule, "alertname": alert.rule, "severity": str(alert.severity)}
    for alias, column in LABEL_ALIASES.items():
        value = getattr(event, column)
        if value is not None:
            labels[alias] = labels[column] = str(value)
    for key, value in event.Tags.items():
        labels[f"tags.{key}"] = "" if value is None else str(value)
    labels.update(alert.group)
    labels.update(alert.labels)
    return labels
