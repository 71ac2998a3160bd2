"""The client library a training script imports: start, monitor and cancel runs, child runs,
tags and properties. The documented import:

    from consumers.client import Experiment, Run, Workspace

    ws = Workspace("ml-team", load_settings("runwatch.yaml"))
    with Experiment(ws, "nightly-train").start_logging() as run:
        run.tag("quality", "fantastic run")
        train()            # an exception fails the run with its text; a normal exit completes it

Importing it loads no server-side layer (rules, noise control, dispatcher, metrics, Alembic)
and defers kafka-python and SQLAlchemy to the first publish and the first read
(tests/test_client_import.py). The names are resolved on first use, so that the modules of
this package that do not need the run model (`runwatch run exec`'s front, which must start
the command within milliseconds) do not pay for pydantic either. Metric logging (`run.log`)
is deliberately absent: runwatch is about status changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumers.client.run import Experiment, Run
    from consumers.client.workspace import Workspace

__all__ = ["Experiment", "Run", "Workspace"]


def __getattr__(name: str) -> Any:
    if name == "Experiment":
        from consumers.client.run import Experiment

        return Experiment
    if name == "Run":
        from consumers.client.run import Run

        return Run
    if name == "Workspace":
        from consumers.client.workspace import Workspace

        return Workspace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
