"""The client library a training script imports: start, monitor and cancel runs, child runs,
tags and properties. The documented import:

    from consumers.client import Experiment, Run, Workspace

    ws = Workspace("ml-team", load_settings("runwatch.yaml"))
    with Experiment(ws, "nightly-train").start_logging() as run:
        run.tag("quality", "fantastic run")
        train()            # an exception fails the run with its text; a normal exit completes it

Importing it loads no server-side layer (rules, noise control, dispatcher, metrics, Alembic)
and defers kafka-python and SQLAlchemy to the first publish and the first read
(tests/test_client_import.py). Metric logging (`run.log`) is deliberately absent: runwatch is
about status changes.
"""

from consumers.client.run import Experiment, Run
from consumers.client.workspace import Workspace

__all__ = ["Experiment", "Run", "Workspace"]
