"""Rendering notifications from templates, in Jinja2's immutable sandbox.

Templates are files in `templates/` (shipped) that a user may override one by one in
`templates_dir`. Run names, tags and messages are data passed in the context, never template
source, so they can only ever be printed: HTML-escaped in `.html` templates, JSON-encoded by
`tojson` in webhook bodies. A template that touches an unsafe attribute, or a variable that
does not exist, or raises anything at all (`range(10**9)` is an OverflowError in the sandbox,
`1 // 0` a ZeroDivisionError), fails to render; the notification then goes dead with reason
`template`.

The context every template gets (one alert, a digest, a storm summary) is defined, and
documented, in one place: consumers/dispatch/context.py. Templates: email/* and
webhook/<format>.json.j2; digests and storm summaries email/digest/* and email/storm/*, for
webhooks webhook/<format>.digest.json.j2 (<format>.storm.json.j2), else the format-neutral
webhook/digest.json.j2 (webhook/storm.json.j2).

Receiver-specific helpers (one home each, used by the shipped templates):

    filters  slack, plain        event text made inert in Slack / Teams (consumers/notify/inert.py)
             fingerprint64       the 16-hex-digit fingerprint Alertmanager consumers expect
             pagerduty_severity  0-4 -> critical, error, warning, info, info
             azure_time          a time as Azure's log search alerts write it
             rfc3339             a time as RFC 3339 in UTC with `Z`
             cause               `event | cause`: "user_code (ValueError at train.py:42)",
                                 "" when the event has no cause (consumers/model/causes.py)
    globals  alertmanager_labels(alert, event), alertmanager_annotations(alert, event, run_url),
             alertmanager_common(mappings), alertmanager_group_labels(values),
             alertmanager_group_key(labels) (consumers/notify/alertmanager.py)
             azure_resource_id(event): the workspace's ARM ID: the event's own ResourceId,
                                 else `azure_resource_id_template` filled from its columns
             azure_table(events), azure_query(alert, event), azure_dimensions(alert, event),
             azure_properties(alert, event),
             azure_minutes(start, end), azure_severity[0-4] (consumers/notify/azure.py)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from consumers.config.receivers import WebhookFormat
from consumers.config.settings import Settings, shipped
from consumers.model.causes import cause_text
from consumers.model.errors import TemplateError
from consumers.model.events import to_utc
from consumers.notify import alertmanager, azure, inert, pagerduty
from consumers.notify.email import RenderedEmail, header_text


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


def fill(template: str | None, columns: Mapping[str, Any]) -> str | None:
    """`{Column}` placeholders filled from an event's columns (each value URL-quoted); None
    when there is no template or it names a column the event lacks."""
    if not template:
        return None
    values = {k: quote(str(v), safe="") for k, v in columns.items() if v not in (None, "")}
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError):
        return None


def rfc3339(value: str | datetime | None) -> str:
    """A stored time as RFC 3339 in UTC with `Z`, as Go (Alertmanager) and PagerDuty write
    it: '2026-11-22T21:03:04.5+00:00' -> '2026-11-22T21:03:04.5Z'."""
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return to_utc(moment).isoformat().replace("+00:00", "Z")


# A template's file is looked at (is it still the one compiled?) at most this often, not at
# every render: that was a stat() per template per notification, 3 per mail, the costliest
# call of a webhook burst's loop after the sockets. An edited template is live within it.
RECHECK_S = 1.0


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class _Environment(ImmutableSandboxedEnvironment):
    """Each template's globals as one plain dict, made when it is loaded (the globals are
    all set before any template is). Jinja2 gives a template a ChainMap over the
    environment's globals, and every render copies it into a dict key by key, each lookup
    trying the template's own (empty) map first and raising KeyError: 60 of the 120 us of a
    webhook body's render, once per notification of a burst."""

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


class Renderer:
    @classmethod
    def for_settings(cls, settings: Settings) -> Renderer:
        return cls(settings.templates_dir, resource_id_template=settings.azure_resource_id_template)

    def __init__(
        self, templates_dir: Path | None = None, *, resource_id_template: str | None = None
    ) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None and Path(templates_dir) != shipped("templates"):
            loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
        loaders.append(jinja2.FileSystemLoader(str(shipped("templates"))))
        self._env = _Environment(
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
        self._env.filters["slack"] = inert.slack
        self._env.filters["plain"] = inert.plain
        self._env.filters["fingerprint64"] = alertmanager.fingerprint64
        self._env.filters["pagerduty_severity"] = pagerduty.severity
        self._env.filters["azure_time"] = azure.azure_time
        self._env.filters["rfc3339"] = rfc3339
        self._env.filters["cause"] = cause_text
        self._env.globals["alertmanager_labels"] = alertmanager.alert_labels
        self._env.globals["alertmanager_annotations"] = alertmanager.alert_annotations
        self._env.globals["alertmanager_common"] = alertmanager.common
        self._env.globals["alertmanager_group_labels"] = alertmanager.group_labels
        self._env.globals["alertmanager_group_key"] = alertmanager.group_key
        self._env.globals["azure_resource_id"] = lambda event: (
            event.get("ResourceId") or fill(resource_id_template, event)
        )
        self._env.globals["azure_table"] = azure.search_table
        self._env.globals["azure_query"] = azure.search_query
        self._env.globals["azure_dimensions"] = azure.dimensions
        self._env.globals["azure_properties"] = azure.custom_properties
        self._env.globals["azure_minutes"] = azure.minutes_between
        self._env.globals["azure_severity"] = azure.SEVERITY_DESCRIPTIONS
        self._selected: dict[tuple[str, ...], tuple[float, jinja2.Template]] = {}

    def _template(self, *names: str) -> jinja2.Template:
        """The first of `names` that exists, in templates_dir, then the shipped ones; looked
        up again (and reloaded if its file changed) at most every RECHECK_S."""
        now = time.monotonic()
        selected = self._selected.get(names)
        if selected is not None and now - selected[0] < RECHECK_S:
            return selected[1]
        template = self._select(names)
        self._selected[names] = (now, template)
        return template

    def _select(self, names: tuple[str, ...]) -> jinja2.Template:
        try:
            return self._env.select_template(list(names))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or names[0]}:{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{names[0]}: {type(exc).__name__}: {exc}") from exc

    def _render(self, name: str, context: Mapping[str, Any], *fallbacks: str) -> str:
        template = self._template(name, *fallbacks)
        try:
            return template.render(**context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateError as exc:  # undefined, sandbox (SecurityError)
            raise TemplateError(f"{template.name}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # range(10**9) (OverflowError), 1 // 0, ...
            # whatever a template raises, rendering it again raises it again: dead, not retried
            raise TemplateError(f"{template.name}: {type(exc).__name__}: {exc}"[:1000]) from exc

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
        """Digests and storm summaries: webhook/<format>.<variant>.json.j2, else the
        format-neutral webhook/<variant>.json.j2."""
        if variant:
            name = f"webhook/{fmt}.{variant}.json.j2"
            text = self._render(name, context, f"webhook/{variant}.json.j2")
        else:
            name = f"webhook/{fmt}.json.j2"
            text = self._render(name, context)
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TemplateError(f"{name}: did not render valid JSON: {exc}") from exc
        return orjson.dumps(document)
