"""`Experiment.submit` and `Run.submit_child`: a command started as a run, from Python, the
way `runwatch run exec` starts one (it is `runwatch run exec`: the same front, supervisor and
courier, in a process of its own, `python -m consumers.client.launch`).

The Run comes back at once, Queued; the command runs on its own (its output goes where this
process's goes). `run.wait_for_completion()` waits for its end and reaps the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from consumers.client.env import new_child_id, new_run_id

if TYPE_CHECKING:
    from consumers.client.run import Experiment, Run

Command = str | Sequence[str]

# The supervisor process of each submitted Run, to reap when the run has ended.
_processes: weakref.WeakKeyDictionary[Run, subprocess.Popen[bytes]] = weakref.WeakKeyDictionary()


def _argv(command: Command) -> list[str]:
    """A string is a shell command line; a sequence, the program and its arguments."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    argv = [str(part) for part in command]
    if not argv:
        raise ValueError("an empty command")
    return argv


def submit(
    experiment: Experiment,
    command: Command,
    *,
    parent: Run | None = None,
    run_id: str | None = None,
    name: str | None = None,
    tags: Mapping[str, str | None] | None = None,
    properties: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    heartbeat_s: float | None = None,
) -> Run:
    from consumers.client.run import Run

    ws = experiment.workspace
    if run_id is None:
        run_id = new_child_id(parent.id) if parent else new_run_id(experiment.name)
    root = (parent.root_id or parent.id) if parent else None
    launch = [sys.executable, "-m", "consumers.client.launch"]
    launch += ["--experiment", experiment.name, "--workspace", ws.name, "--run-id", run_id]
    if parent is not None and root is not None:
        launch += ["--parent", parent.id, "--root", root]
    if name:
        launch += ["--name", name]
    tag_texts = {k: None if v is None else str(v) for k, v in (tags or {}).items()}
    for key, value in tag_texts.items():
        launch += ["--tag", key if value is None else f"{key}={value}"]
    property_texts = {k: str(v) for k, v in (properties or {}).items()}
    for key, text in property_texts.items():
        launch += ["--property", f"{key}={text}"]
    if heartbeat_s is not None:
        launch += ["--heartbeat", str(heartbeat_s)]
    environment = {**os.environ, **ws.environment(), **(env or {})}
    process = subprocess.Popen([*launch, "--", *_argv(command)], env=environment, cwd=cwd)
    run = Run(
        experiment,
        run_id,
        parent=parent,
        root_id=root,
        status="Queued",
        tags=tag_texts,
        properties=property_texts,
    )
    _processes[run] = process
    return run


def reap(run: Run) -> int | None:
    """The exit code of a submitted run's process, once it has ended (None: still running,
    or not submitted from here)."""
    process = _processes.get(run)
    if process is None:
        return None
    try:  # its end is stored: the supervisor is exiting (unless the command ended the run
        return process.wait(timeout=2.0)  # itself and runs on)
    except subprocess.TimeoutExpired:
        return None
