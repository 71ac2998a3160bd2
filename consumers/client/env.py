"""The run context a process passes to the processes it starts, through the environment, and
the run ids the library makes. Its own module, free of pydantic and the run model, because
`runwatch run exec` builds a command's environment before anything heavier is imported (the
command must start within milliseconds).

`Run.environment()` and `runwatch run exec` set these variables; `Run.get_context()` reads
them. RUNWATCH_RUN_CONFIG names the config file the parent was given (`--config`), so the
child reaches the same broker and store. RUNWATCH_RUN_JOURNAL is how the processes of a
command supervised by `runwatch run exec` tell it what they did to its run: the tags and
properties they set (so that exec's final status event, which carries the run's labels as
every status event does, keeps them) and an end they published themselves (exec then
publishes none, and the command's Completed or Failed stands). One JSON object per line,
appended (O_APPEND), so that several processes can write it at once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

ENV_RUN_ID = "RUNWATCH_RUN_ID"
ENV_EXPERIMENT = "RUNWATCH_RUN_EXPERIMENT"
ENV_PARENT = "RUNWATCH_RUN_PARENT_ID"
ENV_ROOT = "RUNWATCH_RUN_ROOT_ID"
ENV_WORKSPACE = "RUNWATCH_RUN_WORKSPACE"
ENV_CONFIG = "RUNWATCH_RUN_CONFIG"
ENV_JOURNAL = "RUNWATCH_RUN_JOURNAL"
RUN_CONTEXT = frozenset(
    (ENV_RUN_ID, ENV_EXPERIMENT, ENV_PARENT, ENV_ROOT, ENV_WORKSPACE, ENV_CONFIG, ENV_JOURNAL)
)

# The connection settings as environment variables (consumers.config.settings reads them).
ENV_BOOTSTRAP = "RUNWATCH_KAFKA__BOOTSTRAP_SERVERS"
ENV_TOPIC = "RUNWATCH_KAFKA__TOPIC"
ENV_STORE = "RUNWATCH_STORE__URL"


def _suffix() -> str:
    return os.urandom(4).hex()


def new_run_id(experiment: str, at: float | None = None) -> str:
    """`<experiment>_<unix seconds>_<8 hex>`: sorts by start, unique without coordination."""
    return f"{experiment}_{int(time.time() if at is None else at)}_{_suffix()}"


def new_child_id(parent_id: str) -> str:
    return f"{parent_id}_{_suffix()}"


def note_in_journal(
    run_id: str, entry: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> None:
    """What this process just did to the run it runs in (under `runwatch run exec`): one
    of `{"status": ...}`, `{"SetTags": ...}`, `{"RemoveTags": [...]}`, `{"AddProperties":
    ...}`. Best effort: without it exec ends the run with the labels it knows."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_JOURNAL)
    if not path or env.get(ENV_RUN_ID) != run_id:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # exec made it; never created here
    except OSError:
        return
    try:
        os.write(fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
    except (OSError, TypeError, ValueError):
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Journal:
    """What the command's processes did to its run, in the order they did it."""

    ended: str | None = None  # the terminal status one of them published
    tags: tuple[tuple[str, str | None], ...] = ()  # set (in order)
    removed: frozenset[str] = frozenset()  # removed since last set
    properties: tuple[tuple[str, str], ...] = ()  # added (write-once: the first stays)

    def labels(
        self, tags: Mapping[str, str | None], properties: Mapping[str, str]
    ) -> tuple[dict[str, str | None], dict[str, str]]:
        """`tags` and `properties` with the journal applied."""
        new_tags = {k: v for k, v in tags.items() if k not in self.removed}
        new_tags.update(self.tags)
        new_properties = dict(properties)
        for key, value in self.properties:
            new_properties.setdefault(key, value)
        return new_tags, new_properties


def read_journal(text: str) -> Journal:
    ended: str | None = None
    tags: dict[str, str | None] = {}
    removed: set[str] = set()
    properties: dict[str, str] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn line
        if not isinstance(entry, dict):
            continue
        status = entry.get("status")
        if status in ("Completed", "Failed", "Canceled"):
            ended = status
        for key, value in dict(entry.get("SetTags") or {}).items():
            tags[str(key)] = None if value is None else str(value)
            removed.discard(str(key))
        for key in entry.get("RemoveTags") or ():
            tags.pop(str(key), None)
            removed.add(str(key))
        for key, value in dict(entry.get("AddProperties") or {}).items():
            properties.setdefault(str(key), str(value))
    return Journal(ended, tuple(tags.items()), frozenset(removed), tuple(properties.items()))
