"""An experiment: a named group of runs in a workspace, and the entry point of a script."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from consumers.client import lookup
from consumers.client.run import Run
from consumers.client.workspace import Workspace


class Experiment:
    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name
        # Stable across processes and machines: the same workspace and name, the same id.
        self.id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"runwatch:{workspace.name}/{name}"))

    def __repr__(self) -> str:
        return f"Experiment({self.workspace.name!r}, {self.name!r})"

    def _run_id(self, now: datetime) -> str:
        return f"{self.name}_{int(now.timestamp())}_{uuid.uuid4().hex[:8]}"

    def start_logging(
        self,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str | None] | None = None,
        properties: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> Run:
        """A Running run, published before this returns. Use it as a context manager to
        complete it on exit and fail it (with the exception's text) on an exception."""
        if not self.name:
            raise ValueError("an experiment needs a name")
        run = Run(
            self,
            run_id or self._run_id(self.workspace.clock()),
            tags=tags,
            properties={k: str(v) for k, v in (properties or {}).items()},
        )
        run._start()
        if description is not None:
            run.set_description(description)
        return run

    def get_runs(
        self,
        tags: lookup.LabelFilter = None,
        properties: lookup.LabelFilter = None,
        status: str | Sequence[str] | None = None,
        include_children: bool = False,
    ) -> list[Run]:
        """This experiment's runs from the store, newest first. `tags`/`properties` as a
        string match runs that have that key; as a dict, runs with those values."""
        wanted = lookup.status_names(status)
        found = lookup.experiment_runs(
            self.workspace.store,
            self.workspace.name,
            self.name,
            statuses=wanted,
            include_children=include_children,
        )
        return [
            Run.from_record(self.workspace, item.record, item.status_time)
            for item in found
            if lookup.matches(item.record, tags=tags, properties=properties)
        ]
