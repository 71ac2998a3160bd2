"""Service configuration: one YAML file, then `RUNWATCH_SECTION__KEY` environment overrides.

Every section forbids unknown keys, so a typo stops start-up with the key's dotted path
instead of silently running on a default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from consumers.config.console import ConsoleSettings, refusal
from consumers.config.noise import NoiseSettings
from consumers.config.receivers import NotifySettings, ReceiverSettings, SmtpSettings
from consumers.config.service import (
    EvaluationSettings,
    HttpIngestSettings,
    KafkaSettings,
    LoggingSettings,
    MetricsSettings,
    StoreSettings,
)
from consumers.model import redact
from consumers.model.errors import ConfigError
from consumers.model.limits import IngestLimits

ENV_PREFIX = "RUNWATCH_"


REPO_ROOT = Path(__file__).resolve().parents[2]


def shipped(name: str) -> Path:
    """The rule set and templates shipped beside the package (a source or editable install)."""
    return REPO_ROOT / name


# Webhook headers whose values are credentials (Authorization, X-Api-Key, ...).
_SECRET_HEADER_WORDS = ("auth", "token", "key", "secret", "cookie", "signature", "password")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    kafka: KafkaSettings = KafkaSettings()
    store: StoreSettings = StoreSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    rules_dir: Path = Field(default_factory=lambda: shipped("alert_rules"))
    templates_dir: Path = Field(default_factory=lambda: shipped("templates"))
    run_url_template: str | None = None  # e.g. "https://ml.example.com/runs/{RunId}"
    # The Azure Resource Manager ID of an event's workspace, filled from its columns, for
    # the azure-common body's alertTargetIDs: "/subscriptions/<id>/resourceGroups/<rg>/
    # providers/Microsoft.MachineLearningServices/workspaces/{WorkspaceName}".
    azure_resource_id_template: str | None = None
    smtp: SmtpSettings = SmtpSettings()
    receivers: dict[str, ReceiverSettings] = Field(default_factory=dict)
    notify: NotifySettings = NotifySettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    noise: NoiseSettings = NoiseSettings()  # grouping, silences, inhibition, routing
    ingest: IngestLimits = IngestLimits()  # what one message may hold (consumers.model.limits)
    http_ingest: HttpIngestSettings = (
        HttpIngestSettings()
    )  # Event Grid push (consumers.ingest.http)
    console: ConsoleSettings = ConsoleSettings()  # the web console (consumers/webconsole)

    @model_validator(mode="after")
    def _receivers(self) -> Settings:
        for name, receiver in self.receivers.items():
            if receiver.given != 1:
                raise ValueError(
                    f"receivers.{name}: give exactly one of email, webhook or alertmanager"
                )
        if self.console.enabled and not self.metrics.enabled:
            raise ValueError("console.enabled needs metrics.enabled: it is served there")
        refused = refusal(
            self.console.enabled, self.metrics.address[0], self.metrics.auth is not None
        )
        if refused is not None:
            raise ValueError(refused)
        return self

    def secret_values(self, *, strict: bool = True) -> list[str]:
        """Every configured secret, read now (files included) and registered for redaction.
        `strict` (serve, config check): a bad secret file is a ConfigError at start-up rather
        than at the first send; otherwise (other commands) it is skipped."""
        values: list[str] = []
        redact.register_url(self.store.url)
        readers: list[tuple[str, Callable[[], str | None]]] = [
            ("smtp", self.smtp.secret),
            ("kafka", self.kafka.sasl_password_value),
        ]
        if self.metrics.auth is not None:
            readers.append(("metrics", self.metrics.auth.secret))
        for name, receiver in self.receivers.items():
            if receiver.webhook is not None:
                hook = receiver.webhook
                redact.register_url(hook.url)
                values.extend(
                    value
                    for header, value in hook.headers.items()
                    if any(word in header.lower() for word in _SECRET_HEADER_WORDS)
                )
                readers.append((f"receivers.{name}", hook.secret))
                readers.append((f"receivers.{name}", hook.routing_key))
            if receiver.alertmanager is not None:
                push = receiver.alertmanager
                redact.register_url(push.url)
                values.extend(
                    value
                    for header, value in push.headers.items()
                    if any(word in header.lower() for word in _SECRET_HEADER_WORDS)
                )
                readers.append((f"receivers.{name}", push.secret))
        for _, read in readers:
            try:
                value = read()
            except ConfigError:
                if strict:
                    raise
                continue
            if value:
                values.append(value)
        redact.register(*values)
        return values

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)


def _format_errors(error: ValidationError, origin: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{origin}: {key}: {message}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, merge and validate; every problem is a ConfigError naming the dotted key."""
    data: Any = {}
    origin = str(path) if path else "(defaults)"
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError("", f"{path}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError("", f"{path}:{where}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("", f"{path}: the top level must be a mapping of sections")
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        env_keys = sorted(k for k in os.environ if k.startswith(ENV_PREFIX))
        hint = f"\n(environment overrides present: {', '.join(env_keys)})" if env_keys else ""
        raise ConfigError(
            key, "invalid configuration\n" + _format_errors(exc, origin) + hint
        ) from None
