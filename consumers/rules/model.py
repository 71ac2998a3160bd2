"""The rule-file schema: frozen pydantic models, strict about keys.

Every key is checked (a typo such as `stauts:` must stop the load, not silently widen a rule
to every event), and everything that can be checked without an event is checked here, at load
time: status names, glob types, JMESPath syntax, throttle columns and durations.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import jmespath
from jmespath import exceptions as jmespath_errors
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from consumers.model.durations import Duration, parse_duration
from consumers.model.events import RunStatusEvent, Status, parse_status

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
DEFAULT_THROTTLE_KEY: tuple[str, ...] = ("RunId", "Status")
DEFAULT_THROTTLE_S = 3600.0
# Dicts make poor keys: throttle on a scalar column (or add a column to the event).
THROTTLE_COLUMNS = frozenset(RunStatusEvent.model_fields) - {"Tags", "Properties"}

STATUS_NAMES = tuple(s.value for s in Status)


def _one_or_many(value: Any) -> Any:
    """`experiment: train-*` and `experiment: [train-*, eval-*]` both read naturally."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return value
    raise ValueError(f"expected a string or a list of strings, got {type(value).__name__}")


def _where(expression: str) -> str:
    """Compiled here so that a syntax error is a load error, never a per-event one."""
    try:
        jmespath.compile(expression)
    except jmespath_errors.LexerError as exc:
        raise ValueError(
            f"invalid JMESPath expression {expression!r}: {exc.message} "
            f"(column {exc.lexer_position})"
        ) from None
    except jmespath_errors.IncompleteExpressionError as exc:
        raise ValueError(
            f"invalid JMESPath expression {expression!r}: incomplete expression "
            f"(column {exc.lex_position})"
        ) from None
    except jmespath_errors.ParseError as exc:
        raise ValueError(
            f"invalid JMESPath expression {expression!r}: {exc.msg} (column {exc.lex_position})"
        ) from None
    return expression


def _throttle_column(name: str) -> str:
    if name in ("Tags", "Properties"):
        raise ValueError(f"{name} is an object; throttle on scalar columns")
    if name not in THROTTLE_COLUMNS:
        raise ValueError(
            f"unknown event column {name!r}; expected one of {', '.join(sorted(THROTTLE_COLUMNS))}"
        )
    return name


def _non_empty(values: tuple[str, ...]) -> tuple[str, ...]:
    """Checked after the items, so a list of only bad items reports just the items."""
    if not values:
        raise ValueError("must not be empty")
    return values


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    """A receiver listed twice still gets one notification."""
    return tuple(dict.fromkeys(names))


StatusList = Annotated[
    tuple[Annotated[str, AfterValidator(parse_status)], ...],
    BeforeValidator(_one_or_many),
    AfterValidator(_non_empty),
]
Globs = Annotated[tuple[str, ...], BeforeValidator(_one_or_many), AfterValidator(_non_empty)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class When(_Strict):
    """Conditions on one event; all given ones must hold. None means "any"."""

    status: StatusList | None = None
    experiment: Globs | None = None
    workspace: Globs | None = None
    run_type: Globs | None = None
    cause: Globs | None = None  # a failed run's cause (alert_rules/causes.yaml): `*oom`
    where: Annotated[str, AfterValidator(_where)] | None = None


class Throttle(_Strict):
    """At most one notification per key per window (the notifier enforces it)."""

    key: Annotated[
        tuple[Annotated[str, AfterValidator(_throttle_column)], ...], AfterValidator(_non_empty)
    ] = DEFAULT_THROTTLE_KEY
    for_: Duration = Field(default=DEFAULT_THROTTLE_S, alias="for")


Operator = Literal[">", ">=", "<", "<=", "==", "!="]
Positive = Annotated[int, Field(ge=1, strict=True)]
NON_TERMINAL = tuple(s for s in STATUS_NAMES if s not in ("Completed", "Failed", "Canceled"))


def _group_column(name: str) -> str:
    """`WorkspaceName`, or a tag / property: `tags.team`, `properties.owner`."""
    head, dot, key = name.partition(".")
    if dot:
        if head not in ("tags", "properties", "Tags", "Properties") or not key:
            raise ValueError(f"{name!r}: expected tags.KEY or properties.KEY")
        return f"{'Tags' if head.lower() == 'tags' else 'Properties'}.{key}"
    return _throttle_column(name)


GroupBy = tuple[Annotated[str, AfterValidator(_group_column)], ...]


class ThresholdSpec(_Strict):
    """Count (or ratio to the events matching `of`) of matching events in a sliding window,
    per group, compared with `value`; fires after `breaches` of the last `periods`
    evaluations breached, resolves after `resolve_after` clear evaluations in a row."""

    measure: Literal["count", "ratio"] = "count"
    of: When | None = None  # the ratio's denominator
    op: Operator = ">="
    value: float
    window: Duration
    every: Duration = 60.0
    group_by: GroupBy = ()
    breaches: Positive = 1
    periods: Positive = 1
    resolve_after: Positive = 1
    min_events: Positive = 1  # a ratio needs this many denominator events to be judged

    @model_validator(mode="after")
    def _consistent(self) -> ThresholdSpec:
        if (self.measure == "ratio") != (self.of is not None):
            raise ValueError("measure: ratio needs `of` (the denominator), and only it")
        if self.breaches > self.periods:
            raise ValueError("breaches cannot exceed periods")
        if self.window <= 0 or self.every <= 0:
            raise ValueError("window and every must be positive")
        return self


def _limits(value: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for status, limit in value.items():
        name = parse_status(str(status))
        if name not in NON_TERMINAL:
            raise ValueError(f"{name} is terminal: a run cannot be stuck in it")
        out[name] = parse_duration(limit)
    if not out:
        raise ValueError("must not be empty")
    return out


class AbsenceSpec(_Strict):
    """A run whose last status is non-terminal and unchanged for longer than its limit;
    `since: last_seen`: a run in such a status that has sent nothing (no status event, no
    run update such as `runwatch run exec`'s heartbeats) for longer than the limit."""

    limits: Annotated[dict[str, float], BeforeValidator(_limits)]
    since: Literal["status", "last_seen"] = "status"
    every: Duration = 60.0


class FlatlineSpec(_Strict):
    """No event matching `when` within `window` (per group, for groups seen before)."""

    window: Duration
    every: Duration = 60.0
    group_by: GroupBy = ()


class DurationSpec(_Strict):
    """A run in Running longer than `max`, or than `factor` x the p90 of the last
    `baseline_runs` completed runs of its experiment (judged only once that many exist)."""

    max: Duration | None = None
    factor: Annotated[float, Field(gt=0)] | None = None
    baseline_runs: Annotated[int, Field(ge=2, strict=True)] = 20
    every: Duration = 60.0

    @model_validator(mode="after")
    def _some_limit(self) -> DurationSpec:
        if self.max is None and self.factor is None:
            raise ValueError("give max, factor, or both")
        return self


class TreeSpec(_Strict):
    """Run trees. rollup: one alert per root listing its matching children (at the root's
    end, or `wait` after the first one); each: per child run; root: per root run."""

    mode: Literal["rollup", "each", "root"] = "rollup"
    wait: Duration = 600.0
    every: Duration = 10.0


KINDS = ("threshold", "absence", "flatline", "duration", "tree")


class Rule(_Strict):
    """One rule. Without a kind section it is per-event: when an event matches `when`, alert
    `notify`. With one (`threshold`, `absence`, `flatline`, `duration`, `tree`), `when` is its
    filter and the scheduler evaluates it every `every`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=200)]
    description: str = ""
    enabled: Annotated[bool, Field(strict=True)] = True
    when: When = When()
    severity: Annotated[int, Field(ge=0, le=4, strict=True)] = 3
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    notify: Annotated[tuple[str, ...], AfterValidator(_non_empty), AfterValidator(_unique)]
    throttle: Throttle = Throttle()
    threshold: ThresholdSpec | None = None
    absence: AbsenceSpec | None = None
    flatline: FlatlineSpec | None = None
    duration: DurationSpec | None = None
    tree: TreeSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"a rule has one kind; got {', '.join(given)}")
        return self

    @property
    def kind(self) -> str:
        """ "event", or the kind section given."""
        return next((k for k in KINDS if getattr(self, k) is not None), "event")

    @property
    def per_event(self) -> bool:
        """Evaluated on each event as it is ingested (not by the scheduler)."""
        return self.tree.mode != "rollup" if self.tree is not None else self.kind == "event"

    @property
    def every(self) -> float | None:
        """The scheduled kinds' evaluation interval."""
        if self.per_event:
            return None
        spec: Any = getattr(self, self.kind)
        return float(spec.every)


class RuleFile(_Strict):
    """One YAML file: several rules under `rules:`."""

    rules: list[Rule]
