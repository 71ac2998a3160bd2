"""The run-status event: one status change of one run, named as in `AmlRunStatusChangedEvent`.

Column names are kept verbatim (PascalCase) so that a field reads the same in the JSON on
Kafka, in this model, in the store and in rule expressions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator


class Status(StrEnum):
    """Run statuses; terminal ones end a run."""

    NotStarted = "NotStarted"
    Queued = "Queued"
    Preparing = "Preparing"
    Provisioning = "Provisioning"
    Starting = "Starting"
    Running = "Running"
    Finalizing = "Finalizing"
    CancelRequested = "CancelRequested"
    Completed = "Completed"
    Failed = "Failed"
    Canceled = "Canceled"
    NotResponding = "NotResponding"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def rank(self) -> int:
        """Lifecycle order, used to break ties between events with the same timestamp."""
        return _RANK[self]

    @classmethod
    def parse(cls, value: str) -> Status:
        """Case-insensitive lookup; producers disagree on capitalisation ("failed", "FAILED")."""
        try:
            return _BY_LOWER[value.strip().lower()]
        except KeyError:
            raise ValueError(f"unknown status {value!r}") from None


TERMINAL_STATUSES = frozenset({Status.Completed, Status.Failed, Status.Canceled})
_RANK = {s: i for i, s in enumerate(Status)}
_BY_LOWER = {s.value.lower(): s for s in Status}


class Level(StrEnum):
    Informational = "Informational"
    Warning = "Warning"
    Error = "Error"
    Critical = "Critical"

    @classmethod
    def parse(cls, value: str) -> Level:
        lowered = value.strip().lower()
        for level in cls:
            if level.value.lower() == lowered:
                return level
        if lowered in {"info", "information"}:
            return cls.Informational
        raise ValueError(f"unknown level {value!r}")


def to_utc(value: datetime) -> datetime:
    """Naive timestamps are taken to be UTC (log-analytics times always are); aware ones are
    converted, so every stored time compares correctly with every other."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _text(value: Any) -> str:
    """Tag and property values are strings in the run API; other JSON values keep their JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _tags(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): (None if v is None else _text(v)) for k, v in value.items()}
    return value


def _properties(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): _text(v) for k, v in value.items() if v is not None}
    return value


def _optional_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


_Status = Status
_Level = Level
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]


class RunStatusEvent(BaseModel):
    """One status change of one run. Immutable: rules and templates read it, never edit it."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_max_length=65_536)

    TimeGenerated: datetime
    RunId: Annotated[str, Field(min_length=1, max_length=256)]
    Status: _Status
    ParentRunId: OptionalText = None
    RootRunId: OptionalText = None
    ExperimentName: OptionalText = None
    ExperimentId: OptionalText = None
    WorkspaceName: OptionalText = None
    WorkspaceId: OptionalText = None
    Message: OptionalText = None
    Level: _Level = _Level.Informational
    OperationName: OptionalText = None
    CorrelationId: OptionalText = None
    Identity: OptionalText = None
    TriggeringUserName: OptionalText = None
    CallerIpAddress: OptionalText = None
    DurationMs: int | None = None
    Location: OptionalText = None
    ResultType: OptionalText = None
    ResultSignature: OptionalText = None
    ResultDescription: OptionalText = None
    RunType: OptionalText = None
    Tags: Annotated[dict[str, str | None], BeforeValidator(_tags)] = Field(default_factory=dict)
    Properties: Annotated[dict[str, str], BeforeValidator(_properties)] = Field(
        default_factory=dict
    )

    @field_validator("TimeGenerated")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value)

    @field_validator("Status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        return _Status.parse(value) if isinstance(value, str) else value

    @field_validator("Level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if value is None:
            return _Level.Informational
        return _Level.parse(value) if isinstance(value, str) else value

    @property
    def root_run_id(self) -> str:
        """The tree this run belongs to: the Kafka key, so one tree's events stay in order."""
        return self.RootRunId or self.ParentRunId or self.RunId

    @property
    def natural_key(self) -> tuple[str, datetime, str]:
        """What makes two messages the same event: redelivered or re-published, one row."""
        return (self.RunId, self.TimeGenerated, self.Status.value)

    def to_json(self) -> bytes:
        """The native wire format (what `runwatch emit` publishes)."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))
