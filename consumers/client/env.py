"""The run context a process passes to the processes it starts, through the environment, and
the run ids the library makes. Its own module, free of pydantic and the run model, because
`runwatch run exec` builds a command's environment before anything heavier is imported (the
command must start within milliseconds).

`Run.environment()` and `runwatch run exec` set these variables; `Run.get_context()` reads
them. RUNWATCH_RUN_CONFIG names the config file the parent was given (`--config`), so the
child reaches the same broker and store; RUNWATCH_RUN_END_FILE is how a command supervised
by `runwatch run exec` tells it that it ended its run itself (exec then publishes no end of
its own, and the command's Completed or Failed stands).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

ENV_RUN_ID = "RUNWATCH_RUN_ID"
ENV_EXPERIMENT = "RUNWATCH_RUN_EXPERIMENT"
ENV_PARENT = "RUNWATCH_RUN_PARENT_ID"
ENV_ROOT = "RUNWATCH_RUN_ROOT_ID"
ENV_WORKSPACE = "RUNWATCH_RUN_WORKSPACE"
ENV_CONFIG = "RUNWATCH_RUN_CONFIG"
ENV_END_FILE = "RUNWATCH_RUN_END_FILE"
RUN_CONTEXT = frozenset(
    (ENV_RUN_ID, ENV_EXPERIMENT, ENV_PARENT, ENV_ROOT, ENV_WORKSPACE, ENV_CONFIG, ENV_END_FILE)
)

# The connection settings as environment variables (consumers.settings reads them).
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


def tell_supervisor(run_id: str, status: str, environ: Mapping[str, str] | None = None) -> None:
    """The run this process runs in (under `runwatch run exec`) was just ended by it: say so,
    so that exec does not end it again. Best effort: exec then ends it as the exit code says."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_END_FILE)
    if not path or env.get(ENV_RUN_ID) != run_id:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # exec made it; never created here
    except OSError:
        return
    try:
        os.write(fd, status.encode())
    except OSError:
        pass
    finally:
        os.close(fd)
