"""The run-update record: a change to a run's tags, properties or description.

It is not a status change, so it is a kind of its own on the topic: a JSON object whose only
top-level key is `RunUpdate`. The decoder recognises it, the store applies it to the run's
current-state row in the order it arrived among the status events, and the rules engine never
sees it (rules fire on status changes only). Producers key it by the run tree's root like the
status events, so one run's updates and status changes share a partition and keep their order.

Applying an update is idempotent (setting a tag, removing one, adding a property that is
already there), so a Kafka replay of a batch leaves the same state.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field

from consumers.model.events import UtcTime

UPDATE_KEY = "RunUpdate"


class RunUpdate(BaseModel):
    """One change of a run's labels. `SetTags` values may be None (a tag without a value);
    `AddProperties` is write-once in the store: a key already there keeps its first value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TimeGenerated: UtcTime
    RunId: Annotated[str, Field(min_length=1, max_length=256)]
    ParentRunId: str | None = None
    RootRunId: str | None = None
    ExperimentName: str | None = None
    WorkspaceName: str | None = None
    SetTags: dict[str, str | None] = Field(default_factory=dict)
    RemoveTags: tuple[str, ...] = ()
    AddProperties: dict[str, str] = Field(default_factory=dict)
    Description: str | None = None

    @property
    def root_run_id(self) -> str:
        """The Kafka key: the same as the run's status events, so the order holds."""
        return self.RootRunId or self.ParentRunId or self.RunId

    @property
    def is_empty(self) -> bool:
        return not (self.SetTags or self.RemoveTags or self.AddProperties) and (
            self.Description is None
        )

    def to_json(self) -> bytes:
        body = self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        body["TimeGenerated"] = self.model_dump(mode="json")["TimeGenerated"]
        body["RunId"] = self.RunId
        return orjson.dumps({UPDATE_KEY: body})


def apply_update(
    tags: dict[str, str | None], properties: dict[str, str], update: RunUpdate
) -> tuple[dict[str, str | None], dict[str, str]]:
    """The labels after `update`: new dicts, the inputs are left alone."""
    new_tags = {k: v for k, v in tags.items() if k not in update.RemoveTags}
    new_tags.update(update.SetTags)
    new_properties = dict(properties)
    for key, value in update.AddProperties.items():
        new_properties.setdefault(key, value)
    return new_tags, new_properties
