"""The producer side: start, monitor and cancel runs, child runs, tags and properties.

    from consumers.client import Experiment, Workspace

    ws = Workspace("ml-team", load_settings("runwatch.yaml"))
    with Experiment(ws, "nightly-train").start_logging() as run:
        run.tag("quality", "fantastic run")
        train()            # an exception fails the run with its text; a normal exit completes it

Metric logging (`run.log`) is deliberately absent: runwatch is about status changes.
"""

from consumers.client.experiment import Experiment
from consumers.client.run import Run
from consumers.client.workspace import Workspace

__all__ = ["Experiment", "Run", "Workspace"]
