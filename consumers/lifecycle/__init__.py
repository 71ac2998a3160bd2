"""The producer side: start, monitor and cancel runs, child runs, tags and properties.

    from consumers.lifecycle import Experiment, Workspace

    ws = Workspace("ml-team", load_settings("runwatch.yaml"))
    with Experiment(ws, "nightly-train").start_logging() as run:
        run.tag("quality", "fantastic run")
        train()            # an exception fails the run with its text; a normal exit completes it

Metric logging (`run.log`) is deliberately absent: runwatch is about status changes.
"""

from consumers.lifecycle.experiment import Experiment
from consumers.lifecycle.run import Run
from consumers.lifecycle.workspace import Workspace

__all__ = ["Experiment", "Run", "Workspace"]
