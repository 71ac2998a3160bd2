"""The console's Jinja2 environment: sandboxed (a template can call no method that is not
safe), HTML-autoescaped (every value from an event, a receiver or a user is text, never
markup), strict about undefined names (a typo in a template is an error in the tests, not
an empty cell), and loaded from the package (no build step, nothing to configure).

Only this module turns values into HTML; templates never mark anything safe."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from jinja2 import PackageLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from consumers.webconsole.timeline import human


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _quote(value: str) -> str:
    """One path segment: a run id with `/` or `?` stays one segment."""
    return quote(value, safe="")


def environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=PackageLoader("consumers.webconsole", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["human"] = human
    env.filters["segment"] = _quote
    return env


def render(env: ImmutableSandboxedEnvironment, template: str, context: dict[str, Any]) -> str:
    return env.get_template(template).render(**context)
