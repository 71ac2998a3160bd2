"""Realistic simulated training runs for the demo, tests and benchmarks.

Pipelines (a root run with sequential step children) go through the real lifecycle: a
failing step fails its pipeline and cancels the steps after it; some pipelines are canceled
by their user; single script runs fail now and then with the errors people actually see.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from consumers.model.events import RunStatusEvent

EXPERIMENTS = ("nightly-train", "bert-finetune", "resnet-sweep", "data-prep", "llm-eval")
STEPS = ("prepare-data", "featurize", "train", "evaluate", "register-model", "deploy")
USERS = ("alice@example.com", "bob@example.com", "carol@example.com")
ERRORS = (
    "UserError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total)",
    "UserError: FileNotFoundError: [Errno 2] No such file or directory: 'data/train.csv'",
    "SystemError: ExecutionTimeout: the run exceeded its maximum run duration (12h)",
    "UserError: ModuleNotFoundError: No module named 'transformers'",
    "SystemError: the compute target was preempted (low-priority VM evicted)",
)


@dataclass(order=True, frozen=True)
class Scheduled:
    """An event and the offset (seconds from the pipeline's start) it happens at."""

    at: float
    seq: int
    event: RunStatusEvent = field(compare=False)


@dataclass
class Simulator:
    workspace: str = "demo-workspace"
    failure_rate: float = 0.2
    cancel_rate: float = 0.05
    step_seconds: tuple[float, float] = (0.3, 1.5)
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)
    _seq: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _event(
        self, start: datetime, at: float, run_id: str, status: str, **extra: object
    ) -> Scheduled:
        self._seq += 1
        event = RunStatusEvent.model_validate(
            {
                "TimeGenerated": start + timedelta(seconds=at),
                "RunId": run_id,
                "Status": status,
                "WorkspaceName": self.workspace,
                "Level": "Error" if status == "Failed" else "Informational",
                "OperationName": "Microsoft.MachineLearningServices/workspaces/runs/write",
                **extra,
            }
        )
        return Scheduled(at, self._seq, event)

    def pipeline(self, start: datetime) -> list[Scheduled]:
        """One pipeline's events, in the order they happen."""
        rng = self._rng
        experiment = rng.choice(EXPERIMENTS)
        user = rng.choice(USERS)
        root = (
            f"{experiment}_{int(start.timestamp())}_{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}"
        )
        common = {
            "ExperimentName": experiment,
            "ExperimentId": str(uuid.uuid5(uuid.NAMESPACE_DNS, experiment)),
            "TriggeringUserName": user,
            "Tags": {"team": rng.choice(("vision", "nlp", "platform")), "pipeline": None},
            "Properties": {"author": "azureml-user", "git_commit": f"{rng.getrandbits(28):07x}"},
        }
        out = [
            self._event(start, 0.0, root, s, RunType="azureml.PipelineRun", **common)
            for s in ("Queued",)
        ]
        t = 0.05
        out.append(self._event(start, t, root, "Running", RunType="azureml.PipelineRun", **common))
        steps = STEPS[: rng.randint(3, len(STEPS))]
        fail_at = rng.randrange(len(steps)) if rng.random() < self.failure_rate else None
        cancel_at = (
            rng.randrange(len(steps))
            if fail_at is None and rng.random() < self.cancel_rate
            else None
        )
        outcome, message = "Completed", None
        child_common = {
            **common,
            "ParentRunId": root,
            "RootRunId": root,
            "RunType": "azureml.StepRun",
            "Tags": {"step": None},
        }
        for index, step in enumerate(steps):
            child = str(uuid.UUID(int=rng.getrandbits(128)))
            tags = {"step": step}
            if outcome != "Completed":
                out.append(
                    self._event(start, t, child, "Canceled", **{**child_common, "Tags": tags})
                )
                continue
            for status in ("Queued", "Preparing", "Running"):
                t += rng.uniform(0.02, 0.1)
                out.append(self._event(start, t, child, status, **{**child_common, "Tags": tags}))
            t += rng.uniform(*self.step_seconds)
            if index == fail_at:
                message = rng.choice(ERRORS)
                out.append(
                    self._event(
                        start, t, child, "Failed", Message=message, **{**child_common, "Tags": tags}
                    )
                )
                outcome = "Failed"
            elif index == cancel_at:
                out.append(
                    self._event(
                        start, t, child, "CancelRequested", **{**child_common, "Tags": tags}
                    )
                )
                t += 0.05
                out.append(
                    self._event(start, t, child, "Canceled", **{**child_common, "Tags": tags})
                )
                outcome = "Canceled"
            else:
                out.append(
                    self._event(start, t, child, "Completed", **{**child_common, "Tags": tags})
                )
        t += 0.05
        if outcome == "Failed":
            out.append(
                self._event(
                    start,
                    t,
                    root,
                    "Failed",
                    RunType="azureml.PipelineRun",
                    Message=f"Pipeline failed: {message}",
                    **common,
                )
            )
        else:
            out.append(
                self._event(start, t, root, outcome, RunType="azureml.PipelineRun", **common)
            )
        return out

    def events(
        self, count: int, *, start: datetime | None = None, spacing: float = 1.0
    ) -> Iterator[RunStatusEvent]:
        """At least `count` events from overlapping pipelines, in time order, without waiting."""
        start = start or datetime.now(UTC)
        heap: list[Scheduled] = []
        produced, offset = 0, 0.0
        while produced < count:
            while not heap or heap[0].at > offset:
                for item in self.pipeline(start + timedelta(seconds=offset)):
                    heapq.heappush(heap, Scheduled(item.at + offset, item.seq, item.event))
                offset += spacing
            produced += 1
            yield heapq.heappop(heap).event
        # whatever is left in the heap belongs to unfinished pipelines; callers asked for count

    def run_live(
        self,
        publish: Callable[[RunStatusEvent], None],
        stop: threading.Event,
        *,
        pipelines_per_minute: float = 30.0,
    ) -> None:
        """Publish events at their real time: a new pipeline every 60/ppm seconds."""
        heap: list[Scheduled] = []
        begin = time.monotonic()
        next_pipeline = 0.0
        interval = 60.0 / pipelines_per_minute
        while not stop.is_set():
            now = time.monotonic() - begin
            if now >= next_pipeline:
                wall = datetime.now(UTC)
                for item in self.pipeline(wall):
                    heapq.heappush(heap, Scheduled(item.at + now, item.seq, item.event))
                next_pipeline = now + self._rng.expovariate(1 / interval)
            while heap and heap[0].at <= now:
                item = heapq.heappop(heap)
                publish(item.event.model_copy(update={"TimeGenerated": datetime.now(UTC)}))
            wake = min([next_pipeline] + ([heap[0].at] if heap else []))
            stop.wait(max(wake - (time.monotonic() - begin), 0.0))
