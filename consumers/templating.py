"""Rendering notifications from templates, in Jinja2's immutable sandbox.

Templates are files in `templates/` (shipped) that a user may override one by one in
`templates_dir`. Run names, tags and messages are data passed in the context, never template
source, so they can only ever be printed: HTML-escaped in `.html` templates, JSON-encoded by
`tojson` in webhook bodies. A template that touches an unsafe attribute, or a variable that
does not exist, or raises anything at all (`range(10**9)` is an OverflowError in the sandbox,
`1 // 0` a ZeroDivisionError), fails to render; the notification then goes dead with reason
`template`.

The context every template gets (built by dispatcher.Dispatcher.context):

    notification  {id, receiver, attempt, created_at}
    alert         {rule, severity (0-4), severity_name, labels, annotations, fingerprint}
    event         the event's columns (TimeGenerated, RunId, Status, ExperimentName, Tags, ...)
    run           the run now (runId, status, startTimeUtc, durationSeconds, ...), or None
    timeline      [{status, time, seconds_in_state, message}] oldest first
    children      {total, by_status: {status: count}, failed: [run records, at most 10]}
    run_url       a link to the run, or None

Digests (email/digest/*, webhook/digest.json.j2) and storm summaries (email/storm/*,
webhook/storm.json.j2) get `notification` plus the context documented in
consumers/noise/digest.py (`group` and `alerts`, or `storm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from consumers.errors import TemplateError
from consumers.notify.email import RenderedEmail, header_text
from consumers.settings import WebhookFormat, shipped


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def isotime(value: str | datetime | None) -> str:
    """'2026-11-22T21:03:04.123456Z' -> '2026-11-22 21:03:04 UTC'."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return value.replace("T", " ")[:19] + " UTC"


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Renderer:
    def __init__(self, templates_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None and Path(templates_dir) != shipped("templates"):
            loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
        loaders.append(jinja2.FileSystemLoader(str(shipped("templates"))))
        self._env = ImmutableSandboxedEnvironment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html", "html.j2"), default_for_string=False
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._env.policies["json.dumps_function"] = _dumps
        self._env.filters["duration"] = duration
        self._env.filters["isotime"] = isotime
        self._env.filters["oneline"] = header_text  # a run name's CR/LF cannot fake a line

    def _render(self, name: str, context: Mapping[str, Any]) -> str:
        try:
            return self._env.get_template(name).render(**context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateError as exc:  # undefined, sandbox (SecurityError), not found
            raise TemplateError(f"{name}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # range(10**9) (OverflowError), 1 // 0, ...
            # whatever a template raises, rendering it again raises it again: dead, not retried
            raise TemplateError(f"{name}: {type(exc).__name__}: {exc}"[:1000]) from exc

    def render_email(self, context: Mapping[str, Any], variant: str = "") -> RenderedEmail:
        """`variant` "digest" or "storm" (noise control) reads templates/email/<variant>/."""
        folder = f"email/{variant}/" if variant else "email/"
        return RenderedEmail(
            subject=header_text(self._render(f"{folder}subject.txt.j2", context)),
            text=self._render(f"{folder}body.txt.j2", context),
            html=self._render(f"{folder}body.html.j2", context),
        )

    def render_webhook(
        self, fmt: WebhookFormat, context: Mapping[str, Any], variant: str = ""
    ) -> bytes:
        """Digests and storm summaries have one body for every format:
        webhook/digest.json.j2 and webhook/storm.json.j2 (with a `text` for Slack/Teams)."""
        name = f"webhook/{variant}.json.j2" if variant else f"webhook/{fmt}.json.j2"
        text = self._render(name, context)
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TemplateError(f"{name}: did not render valid JSON: {exc}") from exc
        return orjson.dumps(document)
