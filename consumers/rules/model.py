"""The rule-file schema: frozen pydantic models, strict about keys.

Every key is checked (a typo such as `stauts:` must stop the load, not silently widen a rule
to every event), and everything that can be checked without an event is checked here, at load
time: status names, glob types, JMESPath syntax, throttle columns and durations.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import jmespath
from jmespath import exceptions as jmespath_errors
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from consumers.events import RunStatusEvent, parse_status

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
DEFAULT_THROTTLE_KEY: tuple[str, ...] = ("RunId", "Status")
DEFAULT_THROTTLE_S = 3600.0
# Dicts make poor keys: throttle on a scalar column (or add a column to the event).
THROTTLE_COLUMNS = frozenset(RunStatusEvent.model_fields) - {"Tags", "Properties"}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds in "90s", "30m", "2h", "1d" or "1h30m". Units are required: a bare number
    could mean seconds or minutes, and a throttle off by 60x is not noticed until 3 a.m."""
    if not isinstance(value, str):
        raise ValueError(f'expected a duration such as "30m", "2h" or "1d", got {value!r}')
    text = value.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f'expected a duration such as "30m", "2h" or "1d", got {value!r}')
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


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
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class When(_Strict):
    """Conditions on one event; all given ones must hold. None means "any"."""

    status: StatusList | None = None
    experiment: Globs | None = None
    workspace: Globs | None = None
    run_type: Globs | None = None
    where: Annotated[str, AfterValidator(_where)] | None = None


class Throttle(_Strict):
    """At most one notification per key per window (the notifier enforces it)."""

    key: Annotated[
        tuple[Annotated[str, AfterValidator(_throttle_column)], ...], AfterValidator(_non_empty)
    ] = DEFAULT_THROTTLE_KEY
    for_: Duration = Field(default=DEFAULT_THROTTLE_S, alias="for")


class Rule(_Strict):
    """One per-event rule: when an event matches `when`, alert `notify`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=200)]
    description: str = ""
    enabled: Annotated[bool, Field(strict=True)] = True
    when: When = When()
    severity: Annotated[int, Field(ge=0, le=4, strict=True)] = 3
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    notify: Annotated[tuple[str, ...], AfterValidator(_non_empty), AfterValidator(_unique)]
    throttle: Throttle = Throttle()


class RuleFile(_Strict):
    """One YAML file: several rules under `rules:`."""

    rules: list[Rule]
