"""The run-status event: one status change of one run, named as in `AmlRunStatusChangedEvent`.

Column names are kept verbatim (PascalCase) so that a field reads the same in the JSON on
Kafka, in this model, in the store and in rule expressions. The lower-case ones (`cause`,
`cause_detail`) are runwatch's own, derived at ingest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from consumers.model.limits import (
    PARSED_UTC,
    TIME_OUT_OF_RANGE,
    IngestLimits,
    json_text,
    limits_of,
)

StatusName = Literal[
    "NotStarted",
    "Queued",
    "Preparing",
    "Provisioning",
    "Starting",
    "Running",
    "Finalizing",
    "CancelRequested",
    "Completed",
    "Failed",
    "Canceled",
    "NotResponding",
]
# Derived at ingest (consumers/ingest/ingestor.py), whatever the input says.
DERIVED_FIELDS = ("cause", "cause_detail")

LevelName = Literal["Informational", "Warning", "Error", "Critical"]


class Status(StrEnum):
    """Run statuses, in lifecycle order. Members equal their strings, so
    `event.Status == Status.Failed` and `event.Status in TERMINAL_STATUSES` both work."""

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


TERMINAL_STATUSES: frozenset[str] = frozenset({Status.Completed, Status.Failed, Status.Canceled})
# Breaks ties between two events of one run with the same timestamp: later in life wins.
STATUS_RANK: dict[str, int] = {s.value: i for i, s in enumerate(Status)}
_STATUS_BY_LOWER = {s.value.lower(): s.value for s in Status}
_LEVEL_BY_LOWER = {
    "informational": "Informational",
    "information": "Informational",
    "info": "Informational",
    "warning": "Warning",
    "error": "Error",
    "critical": "Critical",
}


def parse_status(value: str) -> str:
    """Producers disagree on capitalisation ("failed", "FAILED"); the store never does."""
    try:
        return _STATUS_BY_LOWER[value.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown status {value!r}") from None


def parse_level(value: Any) -> str:
    if value is None:
        return "Informational"
    if isinstance(value, str) and value.strip().lower() in _LEVEL_BY_LOWER:
        return _LEVEL_BY_LOWER[value.strip().lower()]
    raise ValueError(f"unknown level {value!r}")


def to_utc(value: datetime) -> datetime:
    """Naive timestamps are taken to be UTC (log-analytics times always are); aware ones are
    converted, so every stored time compares correctly with every other."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    """to_utc for a validated field: a time UTC cannot hold (0001-01-01T00:00+01:00) is a
    validation error of its own kind, not an OverflowError out of the decoder."""
    tz = value.tzinfo
    if tz is PARSED_UTC or tz is UTC:  # nearly every event: no copy (astimezone was ~1/3
        return value  # of a native event's validation in a profile of `serve`)
    if tz is None:  # to_utc, inlined: it runs for every event
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            TIME_OUT_OF_RANGE, "{time} cannot be represented in UTC", {"time": value.isoformat()}
        ) from None


UtcTime = Annotated[datetime, AfterValidator(_utc)]


def _labels(value: Any, info: ValidationInfo) -> dict[str, str | None]:
    """Tags and properties are strings in the run API: null means none, other JSON values
    (numbers, nested objects) are kept as their JSON text rather than rejected, within the
    depth and size limits of the validation context (consumers.model.limits)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected an object of key/value labels")
    limits = limits_of(info.context)
    return {
        str(k): v if v is None or isinstance(v, str) else _nested(k, v, limits)
        for k, v in value.items()
    }


def _nested(key: Any, value: Any, limits: IngestLimits) -> str:
    try:
        return json_text(value, limits.max_depth, limits.max_value_chars)
    except PydanticCustomError as exc:  # name the label: "deep: nested more than ..."
        raise PydanticCustomError(
            exc.type, "{key}: {detail}", {"key": str(key)[:80], "detail": exc.message()}
        ) from None


def _properties(value: Any, info: ValidationInfo) -> dict[str, str]:
    return {k: v for k, v in _labels(value, info).items() if v is not None}


# The exact spelling validates natively (fast); only a miss pays for the Python fallback.
if TYPE_CHECKING:
    StatusField = StatusName
    LevelField = LevelName
    TagsField = dict[str, str | None]
    PropertiesField = dict[str, str]
else:
    StatusField = Annotated[
        StatusName | Annotated[str, AfterValidator(parse_status)],
        Field(union_mode="left_to_right"),
    ]
    LevelField = Annotated[
        LevelName | Annotated[Any, AfterValidator(parse_level)],
        Field(union_mode="left_to_right"),
    ]
    TagsField = Annotated[
        dict[str, str | None] | Annotated[Any, AfterValidator(_labels)],
        Field(union_mode="left_to_right"),
    ]
    PropertiesField = Annotated[
        dict[str, str] | Annotated[Any, AfterValidator(_properties)],
        Field(union_mode="left_to_right"),
    ]


class RunStatusEvent(BaseModel):
    """One status change of one run. Immutable: rules and templates read it, never edit it."""

    # Unknown keys are ignored: log-analytics exports add TenantId, Type, _ResourceId, ...
    model_config = ConfigDict(frozen=True, extra="ignore")

    TimeGenerated: UtcTime
    RunId: Annotated[str, Field(min_length=1, max_length=256)]
    Status: StatusField
    ParentRunId: str | None = None
    RootRunId: str | None = None
    ExperimentName: str | None = None
    ExperimentId: str | None = None
    WorkspaceName: str | None = None
    WorkspaceId: str | None = None
    Message: str | None = None
    Level: LevelField = "Informational"
    OperationName: str | None = None
    CorrelationId: str | None = None
    Identity: str | None = None
    TriggeringUserName: str | None = None
    CallerIpAddress: str | None = None
    DurationMs: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None  # a BIGINT
    Location: str | None = None
    ResultType: str | None = None
    ResultSignature: str | None = None
    ResultDescription: str | None = None
    RunType: str | None = None
    Tags: TagsField = Field(default_factory=dict)
    Properties: PropertiesField = Field(default_factory=dict)
    # The workspace's Azure Resource Manager ID, where the source says it (a resource log's
    # resourceId, an Event Grid topic, a Log Analytics _ResourceId): consumers/decoding. A
    # Log Analytics row read as a native event spells it `_ResourceId`.
    ResourceId: str | None = Field(
        default=None, validation_alias=AliasChoices("ResourceId", "_ResourceId")
    )
    # Why a failed run failed (consumers/model/causes.py): set at ingest from the cause table,
    # never taken from the input. `cause` is a label; `cause_detail` the exception and the
    # frame that raised it ("ValueError at train.py:42") when the message holds a traceback.
    cause: str | None = None
    cause_detail: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.Status in TERMINAL_STATUSES

    @property
    def root_run_id(self) -> str:
        """The tree this run belongs to: the Kafka key, so one tree's events stay in order."""
        return self.RootRunId or self.ParentRunId or self.RunId

    @property
    def natural_key(self) -> tuple[str, datetime, str]:
        """What makes two messages the same event: redelivered or re-published, one row."""
        return (self.RunId, self.TimeGenerated, self.Status)

    def to_json(self) -> bytes:
        """The native wire format (what `runwatch emit` publishes)."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))
