"""What `runwatch run exec` was asked to do: the command, the run it is, and how to reach
runwatch. Made by the front (consumers.client.launch), read by the supervisor and the
courier; its own module so that none of them imports another for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = "default"  # the same as consumers.client.workspace's


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """What to run, as which run, and how to reach runwatch."""

    command: tuple[str, ...]
    run_id: str
    experiment: str | None  # None: the parent's, read from the store
    workspace: str | None  # None: the parent's, else the default one
    parent: str | None
    root: str | None  # known when the parent is the run exec runs in
    name: str | None
    tags: tuple[tuple[str, str | None], ...]
    properties: tuple[tuple[str, str], ...]
    config: str | None
    bootstrap: str | None
    topic: str | None
    store: str | None
    spool: Path
    heartbeat_s: float
    grace_s: float
    deliver_s: float
