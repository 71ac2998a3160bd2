"""`Experiment.submit` and `Run.submit_child`: a command started as a run, from Python, the
way `runwatch run exec` starts one (it is `runwatch run exec`: the same front, supervisor and
courier, in a process of its own, `python -m consumers.client.launch`).

The Run comes back at once, Queued (consumers.client.run makes it); the command runs on its
own, its output going where this process's goes. `run.wait_for_completion()` waits for its
end and reaps the process (`reap`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence

Command = str | Sequence[str]

# The supervisor process of each submitted Run (weakly: a Run nobody holds is forgotten).
_processes: weakref.WeakKeyDictionary[object, subprocess.Popen[bytes]] = weakref.WeakKeyDictionary()


def _argv(command: Command) -> list[str]:
    """A string is a shell command line; a sequence, the program and its arguments."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    argv = [str(part) for part in command]
    if not argv:
        raise ValueError("an empty command")
    return argv


def launch(
    command: Command,
    *,
    experiment: str,
    workspace: str,
    run_id: str,
    environment: Mapping[str, str],
    parent: tuple[str, str] | None = None,
    name: str | None = None,
    tags: Mapping[str, str | None] | None = None,
    properties: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """`runwatch run exec` of `command` as run `run_id` (a child of `parent`: its id and its
    root's), started and not waited for."""
    argv = [sys.executable, "-m", "consumers.client.launch"]
    argv += ["--experiment", experiment, "--workspace", workspace, "--run-id", run_id]
    if parent is not None:
        argv += ["--parent", parent[0], "--root", parent[1]]
    if name:
        argv += ["--name", name]
    for key, value in (tags or {}).items():
        argv += ["--tag", key if value is None else f"{key}={value}"]
    for key, text in (properties or {}).items():
        argv += ["--property", f"{key}={text}"]
    return subprocess.Popen([*argv, "--", *_argv(command)], env=dict(environment), cwd=cwd)


def track(run: object, process: subprocess.Popen[bytes]) -> None:
    _processes[run] = process


def reap(run: object) -> int | None:
    """The exit code of a submitted run's process, once it has ended (None: still running,
    or not submitted from here)."""
    process = _processes.get(run)
    if process is None:
        return None
    try:  # its end is stored: the supervisor is exiting (unless the command ended the run
        return process.wait(timeout=2.0)  # itself and runs on)
    except subprocess.TimeoutExpired:
        return None
