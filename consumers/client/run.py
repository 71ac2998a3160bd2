"""A run as a training script sees it, and the experiment that starts and finds runs.

Every status change is one event on the topic, every tag/property/description change one
run-update record; reads come back from the store, once it shows what this process published
(`Workspace.caught_up`). Experiment and Run share this module because each makes the other
(`start_logging` and `get_runs` make Runs, `Run.attach` makes the Experiment of a stored run).

The Run keeps its own view of its tags and properties: each status event carries them ("at
the time of the change", as rules expect), and write-once properties are checked against it
before anything is published.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from consumers.client.env import (
    ENV_EXPERIMENT,
    ENV_PARENT,
    ENV_ROOT,
    ENV_RUN_ID,
    new_child_id,
    new_run_id,
    note_in_journal,
)
from consumers.client.filters import LabelFilter, matches, status_names
from consumers.client.workspace import Workspace
from consumers.ingest.encoding import RUN_STATUS_OPERATION
from consumers.model.errors import PropertyConflictError, RunStateError, RunwatchError
from consumers.model.events import TERMINAL_STATUSES, RunStatusEvent, Status
from consumers.model.updates import RunUpdate

if TYPE_CHECKING:
    from consumers.client.reads import StoredRun

__all__ = ["ENV_EXPERIMENT", "ENV_PARENT", "ENV_ROOT", "ENV_RUN_ID", "Experiment", "Run"]

RUN_TYPE = "runwatch.run"
_TICK = timedelta(microseconds=1)
_ENVELOPE_RECORDS = 200  # children per message: well under the 1 MiB message limit


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


class Run:
    """Get one from `Experiment.start_logging()`, `run.child_run()`, `Run.get_context()`,
    `Run.attach()` or `Experiment.get_runs()`; not meant to be built directly."""

    def __init__(
        self,
        experiment: Experiment,
        run_id: str,
        *,
        parent: Run | str | None = None,
        root_id: str | None = None,
        status: str = Status.NotStarted,
        tags: Mapping[str, str | None] | None = None,
        properties: Mapping[str, str] | None = None,
        known_until: datetime | None = None,
    ) -> None:
        self.experiment = experiment
        self.id = run_id
        self._parent = parent if isinstance(parent, Run) else None
        self.parent_id: str | None = parent.id if isinstance(parent, Run) else parent
        inherited = (parent.root_id or parent.id) if isinstance(parent, Run) else None
        self.root_id: str | None = root_id or inherited
        self._status = status
        self._tags: dict[str, str | None] = dict(tags or {})
        self._properties: dict[str, str] = dict(properties or {})
        # The newest change time of this run seen in the store or published by this Run:
        # its next change must be later (see _time).
        self._last: datetime | None = known_until

    # ---- identity -------------------------------------------------------------------
    @property
    def workspace(self) -> Workspace:
        return self.experiment.workspace

    @property
    def parent(self) -> Run | None:
        """The parent run (read from the store when this Run was not made by it)."""
        if self._parent is None and self.parent_id is not None:
            self._parent = Run.attach(self.workspace, self.parent_id)
        return self._parent

    def __repr__(self) -> str:
        return f"Run({self.id!r}, experiment={self.experiment.name!r})"

    # This object's own view, as the run API's `run.status` / `run.tags` have it: what it
    # last published, or what the store showed when the object was made from it.
    # get_status() / get_tags() read the store again.
    @property
    def status(self) -> str:
        return str(self._status)

    @property
    def tags(self) -> dict[str, str | None]:
        return dict(self._tags)

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._properties)

    # ---- publishing -----------------------------------------------------------------
    def _time(self, at: datetime | None = None) -> datetime:
        """Strictly increasing per run, also across Run objects of one run in this process:
        (RunId, TimeGenerated, Status) is the natural key, and a read waits for a change by
        comparing its time with the store's latest. `at`: when it happened, if not now."""
        now = self.workspace.clock() if at is None else at
        published = self.workspace.ledger.latest(self.id)
        latest = max((t for t in (self._last, published) if t is not None), default=None)
        at = now if latest is None or now > latest else latest + _TICK
        self._last = at
        return at

    def _event(
        self,
        status: str,
        message: str | None = None,
        code: str | None = None,
        *,
        at: datetime | None = None,
    ) -> RunStatusEvent:
        at = self._time(at)
        self._status = status
        return RunStatusEvent.model_validate(
            {
                "TimeGenerated": at,
                "RunId": self.id,
                "Status": status,
                "ParentRunId": self.parent_id,
                "RootRunId": self.root_id,
                "ExperimentName": self.experiment.name,
                "ExperimentId": self.experiment.id,
                "WorkspaceName": self.workspace.name,
                "Message": message,
                "Level": "Error" if status == Status.Failed else "Informational",
                "OperationName": RUN_STATUS_OPERATION,
                "TriggeringUserName": _user(),
                "ResultSignature": code,
                "RunType": RUN_TYPE,
                "Tags": self._tags,
                "Properties": self._properties,
            }
        )

    def _start(self) -> Run:
        self.workspace.publish([self._event(Status.Running)])
        return self

    def _finish(self, status: str, message: str | None = None, code: str | None = None) -> None:
        if self._status in TERMINAL_STATUSES:
            raise RunStateError(
                f"run {self.id} is already {self._status}; it cannot become {status}"
            )
        self.workspace.publish([self._event(status, message, code)])
        note_in_journal(self.id, {"status": status})

    def complete(self) -> None:
        self._finish(Status.Completed)

    def fail(
        self, error_details: str | BaseException | None = None, error_code: str | None = None
    ) -> None:
        """Failed, with the error text as the event's Message (what alert mails show)."""
        if isinstance(error_details, BaseException):
            error_details = str(error_details) or type(error_details).__name__
        self._finish(Status.Failed, error_details, error_code)

    def cancel(self) -> None:
        """CancelRequested, then Canceled: two status changes, two events."""
        self._finish(Status.CancelRequested)
        self.workspace.publish([self._event(Status.Canceled)])
        note_in_journal(self.id, {"status": Status.Canceled.value})

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._status in TERMINAL_STATUSES:
            return  # finished inside the block
        if exc is None:
            self.complete()
        elif isinstance(exc, KeyboardInterrupt):
            self.cancel()
        else:
            self.fail(str(exc) or type(exc).__name__, error_code=type(exc).__name__)

    # ---- tags, properties, description ----------------------------------------------
    def _update(self, **change: Any) -> None:
        self.workspace.publish_update(self._update_record(**change))
        labels = {k: v for k, v in change.items() if k != "Description"}
        if labels:
            note_in_journal(self.id, labels)

    def _update_record(self, **change: Any) -> RunUpdate:
        """A run-update record of this run; without a change, a heartbeat (it only moves
        the run's UpdatedTime and LastSeen)."""
        at = self._time()
        return RunUpdate(
            TimeGenerated=at,
            RunId=self.id,
            ParentRunId=self.parent_id,
            RootRunId=self.root_id,
            ExperimentName=self.experiment.name,
            WorkspaceName=self.workspace.name,
            **change,
        )

    def tag(self, key: str, value: str | None = None) -> None:
        """Set a tag (mutable; None means a tag without a value)."""
        if not key:
            raise ValueError("a tag needs a key")
        text = None if value is None else _text(value)
        self._tags[key] = text
        self._update(SetTags={key: text})

    def set_tags(self, tags: Mapping[str, str | None]) -> None:
        new = {k: None if v is None else _text(v) for k, v in tags.items()}
        self._tags.update(new)
        if new:
            self._update(SetTags=new)

    def remove_tag(self, key: str) -> None:
        self._tags.pop(key, None)
        self._update(RemoveTags=(key,))

    def add_properties(self, properties: Mapping[str, Any]) -> None:
        """Write-once: the same value again is fine; another value raises
        PropertyConflictError and nothing of the call is published."""
        new: dict[str, str] = {}
        for key, value in properties.items():
            text = _text(value)
            current = self._properties.get(key)
            if current is not None and current != text:
                raise PropertyConflictError(self.id, key, current, text)
            if current is None:
                new[key] = text
        if new:
            self._properties.update(new)
            self._update(AddProperties=new)

    def add_property(self, key: str, value: Any) -> None:
        self.add_properties({key: value})

    def set_description(self, description: str) -> None:
        self._update(Description=description)

    # ---- reading back ---------------------------------------------------------------
    def _stored(self) -> StoredRun:
        """The store's row, once it shows every change this process published to the run."""
        return self.workspace.find(self.id)

    def get_status(self) -> str:
        """From the store, so a cancel from elsewhere (`runwatch run cancel`) shows."""
        return str(self._stored().record["status"])

    def get_details(self) -> dict[str, Any]:
        """runId, status, startTimeUtc, endTimeUtc, durationSeconds, tags, properties,
        parentRunId, experimentName, description, error ({message, code} once Failed), ..."""
        record = dict(self._stored().record)
        record["error"] = None
        if record["status"] == Status.Failed:
            code = self.workspace.reads.error_code(self.id)
            record["error"] = {"message": record["message"], "code": code}
        return record

    def get_tags(self) -> dict[str, str | None]:
        return dict(self._stored().record["tags"])

    def get_properties(self) -> dict[str, str]:
        return dict(self._stored().record["properties"])

    @property
    def description(self) -> str | None:
        text: str | None = self._stored().record["description"]
        return text

    @description.setter
    def description(self, text: str) -> None:
        self.set_description(text)

    # ---- children -------------------------------------------------------------------
    def _new_child(
        self,
        run_id: str | None,
        tags: Mapping[str, str | None] | None,
        properties: Mapping[str, Any] | None = None,
    ) -> Run:
        return Run(
            self.experiment,
            run_id or new_child_id(self.id),
            parent=self,
            root_id=self.root_id or self.id,
            tags={k: None if v is None else _text(v) for k, v in (tags or {}).items()},
            properties={k: _text(v) for k, v in (properties or {}).items()},
        )

    def child_run(
        self,
        name: str | None = None,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str | None] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> Run:
        """A started child run; its status is independent of this run's. `name` becomes
        its description."""
        child = self._new_child(run_id, tags, properties)._start()
        if name:
            child.set_description(name)
        return child

    def create_children(
        self,
        count: int | None = None,
        tag_key: str | None = None,
        tag_values: Sequence[str] | None = None,
    ) -> list[Run]:
        """`count` started children published together (one message per 200 children),
        each tagged `tag_key` = its value from `tag_values` when given."""
        if tag_values is not None:
            if tag_key is None:
                raise ValueError("tag_values needs a tag_key")
            if count is None:
                count = len(tag_values)
            elif count != len(tag_values):
                raise ValueError(f"count is {count} but there are {len(tag_values)} tag_values")
        if count is None or count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        kids = []
        for index in range(count):
            tags = None
            if tag_key is not None:
                tags = {tag_key: None if tag_values is None else _text(tag_values[index])}
            kids.append(self._new_child(None, tags))
        started = [kid._event(Status.Running) for kid in kids]
        for start in range(0, len(started), _ENVELOPE_RECORDS):
            self.workspace.publish(started[start : start + _ENVELOPE_RECORDS])
        return kids

    def get_children(
        self,
        recursive: bool = False,
        tags: LabelFilter = None,
        properties: LabelFilter = None,
        status: str | Sequence[str] | None = None,
    ) -> list[Run]:
        """Children from the store, oldest first (all descendants with `recursive`), once it
        shows every change this process published to any run it could return."""
        ws, ledger = self.workspace, self.workspace.ledger
        if recursive:
            tree = self.root_id or self.id  # what its descendants carry (see _new_child)
            reads = ws.caught_up(ledger.pending_descendants(self.id, tree))
            found = reads.descendants(self.id)
        else:
            found = ws.caught_up(ledger.pending_children(self.id)).children([self.id])
        wanted = status_names(status)
        return [
            Run.from_stored(ws, kid, self.experiment)
            for kid in found
            if matches(kid.record, tags=tags, properties=properties, statuses=wanted)
        ]

    def submit_child(
        self,
        command: str | Sequence[str],
        *,
        run_id: str | None = None,
        name: str | None = None,
        tags: Mapping[str, str | None] | None = None,
        properties: Mapping[str, Any] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Run:
        """Start `command` (a shell line, or program and arguments) as a child run, as
        `runwatch run exec --parent` does; returns it Queued, without waiting."""
        root = self.root_id or self.id
        return self.experiment._submit(
            command, new_child_id(self.id) if run_id is None else run_id, (self, root),
            name, tags, properties, cwd, env,
        )  # fmt: skip

    def wait_for_completion(
        self, timeout: float | None = None, show_output: bool = False, raise_on_error: bool = True
    ) -> dict[str, Any]:
        """Block until the run has ended; its details (as `get_details()`). `show_output`
        prints each status change; `raise_on_error` raises RunFailedError (its Message) if
        it Failed. WaitTimeoutError after `timeout` seconds."""
        from consumers.client.wait import wait_for_completion

        return wait_for_completion(self, timeout, show_output, raise_on_error)

    # ---- attaching to an existing run -----------------------------------------------
    @classmethod
    def from_stored(
        cls, workspace: Workspace, stored: StoredRun, experiment: Experiment | None = None
    ) -> Run:
        """A Run for a stored row, in `experiment` when it is that run's experiment."""
        record = stored.record
        name = record["experimentName"] or ""
        if experiment is None or experiment.name != name or experiment.workspace is not workspace:
            experiment = Experiment(workspace, name)
        known = max(t for t in (stored.status_time, stored.updated_time) if t is not None)
        return cls(
            experiment,
            record["runId"],
            parent=record["parentRunId"],
            root_id=record["rootRunId"],
            status=record["status"],
            tags=record["tags"],
            properties=record["properties"],
            known_until=known,
        )

    @classmethod
    def attach(cls, workspace: Workspace, run_id: str) -> Run:
        """A run someone else started (another process, `runwatch run start`), from the store,
        showing every change this process published to it; waits up to the workspace's
        consistency_timeout for a run published elsewhere to be stored."""
        stored = workspace.find(run_id)
        if stored.record["workspaceName"] not in (None, workspace.name):
            workspace = workspace.sibling(stored.record["workspaceName"])
        return cls.from_stored(workspace, stored)

    def environment(self) -> dict[str, str]:
        """Variables for a child process, in which `Run.get_context()` finds this run."""
        env = self.workspace.environment() | {
            ENV_RUN_ID: self.id,
            ENV_EXPERIMENT: self.experiment.name,
        }
        if self.parent_id:
            env[ENV_PARENT] = self.parent_id
        if self.root_id:
            env[ENV_ROOT] = self.root_id
        return env

    @classmethod
    def get_context(
        cls, environ: Mapping[str, str] | None = None, *, workspace: Workspace | None = None
    ) -> Run:
        """The run this process belongs to, from the variables `environment()` set; its tags
        and properties are read from the store, so later status events carry them."""
        env = os.environ if environ is None else environ
        run_id = env.get(ENV_RUN_ID)
        if not run_id:
            raise RunwatchError(
                f"not inside a run: {ENV_RUN_ID} is not set (start the process with "
                "the variables of run.environment())"
            )
        return cls.attach(workspace or Workspace.from_env(env), run_id)


class Experiment:
    """A named group of runs in a workspace, and the entry point of a script."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name
        # Stable across processes and machines: the same workspace and name, the same id.
        self.id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"runwatch:{workspace.name}/{name}"))

    def __repr__(self) -> str:
        return f"Experiment({self.workspace.name!r}, {self.name!r})"

    def _run_id(self, now: datetime) -> str:
        return new_run_id(self.name, now.timestamp())

    def start_logging(
        self,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str | None] | None = None,
        properties: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> Run:
        """A Running run, published before this returns. Use it as a context manager to
        complete it on exit and fail it (with the exception's text) on an exception."""
        if not self.name:
            raise ValueError("an experiment needs a name")
        run = Run(
            self,
            run_id or self._run_id(self.workspace.clock()),
            tags=tags,
            properties={k: str(v) for k, v in (properties or {}).items()},
        )
        run._start()
        if description is not None:
            run.set_description(description)
        return run

    def submit(
        self,
        command: str | Sequence[str],
        *,
        run_id: str | None = None,
        name: str | None = None,
        tags: Mapping[str, str | None] | None = None,
        properties: Mapping[str, Any] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Run:
        """Start `command` (a shell line, or program and arguments) as a run of this
        experiment, as `runwatch run exec` does; returns it Queued, without waiting."""
        run_id = run_id or self._run_id(self.workspace.clock())
        return self._submit(command, run_id, None, name, tags, properties, cwd, env)

    def _submit(
        self,
        command: str | Sequence[str],
        run_id: str,
        parent: tuple[Run, str] | None,
        name: str | None,
        tags: Mapping[str, str | None] | None,
        properties: Mapping[str, Any] | None,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
    ) -> Run:
        """`runwatch run exec` in a process of its own (consumers.client.submit)."""
        from consumers.client.submit import launch, track

        tag_texts = {k: None if v is None else _text(v) for k, v in (tags or {}).items()}
        property_texts = {k: _text(v) for k, v in (properties or {}).items()}
        process = launch(
            command,
            experiment=self.name,
            workspace=self.workspace.name,
            run_id=run_id,
            environment={**os.environ, **self.workspace.environment(), **(env or {})},
            parent=None if parent is None else (parent[0].id, parent[1]),
            name=name,
            tags=tag_texts,
            properties=property_texts,
            cwd=cwd,
        )
        run = Run(
            self,
            run_id,
            parent=None if parent is None else parent[0],
            root_id=None if parent is None else parent[1],
            status=Status.Queued,
            tags=tag_texts,
            properties=property_texts,
        )
        track(run, process)
        return run

    def get_runs(
        self,
        tags: LabelFilter = None,
        properties: LabelFilter = None,
        status: str | Sequence[str] | None = None,
        include_children: bool = False,
    ) -> list[Run]:
        """This experiment's runs from the store, newest first, once it shows every change
        this process published to a run of it. `tags`/`properties` as a string match runs
        that have that key; as a dict, runs with those values."""
        ws = self.workspace
        marks = ws.ledger.pending_experiment(ws.name, self.name, roots_only=not include_children)
        found = ws.caught_up(marks).experiment_runs(
            ws.name, self.name, statuses=status_names(status), include_children=include_children
        )
        return [
            Run.from_stored(ws, item, self)
            for item in found
            if matches(item.record, tags=tags, properties=properties)
        ]
