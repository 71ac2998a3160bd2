"""Service configuration: one YAML file, then `RUNWATCH_SECTION__KEY` environment overrides.

Every section forbids unknown keys, so a typo stops start-up with the key's dotted path
instead of silently running on a default.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from consumers.config.noise import NoiseSettings
from consumers.model import redact
from consumers.model.errors import ConfigError
from consumers.model.limits import IngestLimits

ENV_PREFIX = "RUNWATCH_"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_private(file: Path, key: str) -> None:
    """A secret file must not be readable by others: refused when world-readable, and when
    group-readable unless the group is runwatch's own (Kubernetes with fsGroup, which turns
    a Secret volume's defaultMode 0400 into 0440 for that group, runAsGroup here)."""
    try:
        info = file.stat()  # follows symlinks: a Kubernetes mount is a link to the data
    except OSError as exc:
        raise ConfigError(key, f"cannot read secret file {file}: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    own_group = hasattr(os, "getegid") and info.st_gid in {os.getegid(), *os.getgroups()}
    if mode & stat.S_IROTH or (mode & stat.S_IRGRP and not own_group):
        who = "everyone" if mode & stat.S_IROTH else f"group {info.st_gid}"
        raise ConfigError(
            key,
            f"secret file {file} is readable by {who} (mode {mode:04o}): "
            f"chmod 600 {file} (in Kubernetes: defaultMode: 0400 on the Secret volume)",
        )


def read_secret(value: SecretStr | None, file: Path | None, key: str) -> str | None:
    """A secret given inline (usually through the environment) or as a file (Kubernetes
    Secret mounts); the file wins so that rotating it needs no restart of the config.
    Every value read is registered for redaction, so it never reaches a log line."""
    if file is not None:
        check_private(file, key)
        try:
            secret = file.read_text().strip()
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {file}: {exc.strerror}") from None
        redact.register(secret)
        return secret
    return value.get_secret_value() if value is not None else None


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "runwatch.run-status"
    dead_letter_topic: str = "runwatch.dead-letter"
    group_id: str = "runwatch"
    client_id: str = "runwatch"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    max_poll_records: int = Field(default=5000, ge=1, le=100_000)
    fetch_max_wait_ms: int = Field(default=10, ge=0, le=10_000)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3000, ge=100)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    # The largest record (key + value + headers) put on the dead-letter topic: a bigger letter
    # is published truncated. Under Kafka's default message.max.bytes (1,048,588) and Event
    # Hubs' 1 MB, with room for the batch framing.
    dead_letter_max_bytes: int = Field(default=1_000_000, ge=16_384)
    # A dead letter the broker keeps refusing (too large, topic invalid or not authorised) is
    # given up after this many attempts; it stays in the store. A broker that is away is
    # waited for instead, however long.
    dead_letter_max_attempts: int = Field(default=5, ge=1, le=100)
    # Reconnect attempts back off exponentially from 50 ms up to this (kafka-python's 30 s
    # default meant ingest resumed up to that long after the broker was back).
    reconnect_backoff_max_ms: int = Field(default=500, ge=50, le=60_000)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    def sasl_password_value(self) -> str | None:
        return read_secret(self.sasl_password, self.sasl_password_file, "kafka.sasl_password_file")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python's consumer, producer and admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            password = self.sasl_password_value()
            if not self.sasl_username or password is None:
                raise ConfigError(
                    "kafka.sasl_username",
                    f"{self.security_protocol} needs sasl_username and sasl_password "
                    "(or sasl_password_file)",
                )
            options |= {
                "sasl_mechanism": self.sasl_mechanism or "PLAIN",
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": password,
            }
        if self.security_protocol in {"SSL", "SASL_SSL"}:
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, name)
                if path is not None:
                    options[name] = str(path)
        return options


class StoreSettings(_Section):
    url: str = "sqlite:///./runwatch.db"
    migrate_on_start: bool = True
    retention_days: float | None = Field(default=30, gt=0)
    retention_batch: int = Field(default=5000, ge=1)
    retention_interval_s: float = Field(default=3600, gt=0)
    # PostgreSQL only: events partitioned by TimeGenerated, one partition per interval,
    # created this many intervals ahead; retention drops whole partitions.
    partition_interval_hours: int = Field(default=24, ge=1, le=24 * 31)
    partitions_ahead: int = Field(default=3, ge=1, le=366)
    pool_size: int = Field(default=10, ge=1, le=200)  # PostgreSQL connections per replica
    # A dead letter's payload is stored up to this many bytes (PayloadBytes keeps the size).
    dead_letter_payload_max_bytes: int = Field(default=4_194_304, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("expected sqlite:///path or postgresql://user@host/db")
        return value


class EndpointAuth(_Section):
    """Credentials for /metrics, /healthz and /readyz: a bearer token or HTTP basic auth.
    Secrets come from the environment (`RUNWATCH_METRICS__AUTH__BEARER_TOKEN`) or a file,
    read on every request so that a rotated Secret needs no restart."""

    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # false: the probes answer without credentials (kubelet probes cannot read a Secret).
    protect_probes: bool = True

    @model_validator(mode="after")
    def _one_scheme(self) -> EndpointAuth:
        bearer = self.bearer_token is not None or self.bearer_token_file is not None
        basic = self.username is not None
        basic_secret = self.password is not None or self.password_file is not None
        if bearer and (basic or basic_secret):
            raise ValueError("give either a bearer token or username/password, not both")
        if basic != basic_secret:
            raise ValueError("basic auth needs both username and password (or password_file)")
        if not bearer and not basic:
            raise ValueError("give bearer_token(_file) or username and password(_file)")
        return self

    @property
    def scheme(self) -> Literal["bearer", "basic"]:
        return "basic" if self.username is not None else "bearer"

    def secret(self) -> str:
        if self.scheme == "basic":
            value = read_secret(self.password, self.password_file, "metrics.auth.password_file")
        else:
            value = read_secret(
                self.bearer_token, self.bearer_token_file, "metrics.auth.bearer_token_file"
            )
        if not value:
            raise ConfigError("metrics.auth", "the configured secret is empty")
        return value


class MetricsSettings(_Section):
    enabled: bool = True
    listen: str = "127.0.0.1:9464"
    auth: EndpointAuth | None = None
    # Distinct experiments labelled in runwatch_run_failures_total; later ones are "_other".
    experiment_label_limit: int = Field(default=200, ge=0, le=10_000)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


class HttpIngestSettings(_Section):
    """`POST /events` for Event Grid push (a webhook event subscription), in Event Grid schema
    or CloudEvents 1.0; each accepted batch is published to `kafka.topic`. Off by default.
    The shared secret comes from `RUNWATCH_HTTP_INGEST__SECRET` or `secret_file` (one secret
    per line: the old and the new one while a subscription's secret is rotated), read on every
    request."""

    enabled: bool = False
    listen: str = "127.0.0.1:8088"
    path: str = "/events"
    secret: SecretStr | None = None
    secret_file: Path | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    header_timeout_s: float = Field(default=10.0, gt=0)  # request line and headers
    body_timeout_s: float = Field(default=30.0, gt=0)
    publish_timeout_s: float = Field(default=10.0, gt=0)  # broker ack; beyond it, 503
    # CloudEvents webhook abuse protection: the origins given consent ("*": any) and the
    # WebHook-Allowed-Rate granted (requests per minute; null: "*", no limit).
    allowed_origins: list[str] = Field(default_factory=lambda: ["eventgrid.azure.net"])
    allowed_rate: int | None = Field(default=None, ge=1)
    tls_certfile: Path | None = None  # Event Grid delivers to https:// only: TLS here or
    tls_keyfile: Path | None = None  # at a proxy in front

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("expected a path starting with /")
        return value

    @model_validator(mode="after")
    def _complete(self) -> HttpIngestSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("give both tls_certfile and tls_keyfile, or neither")
        if self.enabled and self.secret is None and self.secret_file is None:
            raise ValueError("enabled without a secret: set secret (env) or secret_file")
        return self

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    def secrets(self) -> tuple[str, ...]:
        """Every secret that authenticates a request; never empty when enabled."""
        if self.secret_file is not None:
            text = read_secret(None, self.secret_file, "http_ingest.secret_file") or ""
            found = tuple(line.strip() for line in text.splitlines() if line.strip())
        else:
            found = (self.secret.get_secret_value(),) if self.secret is not None else ()
        if not found:
            raise ConfigError("http_ingest.secret", "the configured secret is empty")
        return found


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


REPO_ROOT = Path(__file__).resolve().parents[2]


def shipped(name: str) -> Path:
    """The rule set and templates shipped beside the package (a source or editable install)."""
    return REPO_ROOT / name


TlsMode = Literal["starttls-required", "starttls-opportunistic", "implicit", "none"]
_OLD_SMTP_KEYS = {
    "starttls": "smtp.tls_mode: starttls-required (or starttls-opportunistic, the default)",
    "tls": "smtp.tls_mode: implicit",
}


class SmtpSettings(_Section):
    """How mail leaves: `tls_mode` starttls-opportunistic (default: upgrade whenever the
    server offers STARTTLS), starttls-required (refuse a server that does not), implicit
    (TLS from the first byte, port 465) or none. Certificates are verified (against
    `ca_file` when given); AUTH is never sent over a connection without TLS unless
    `allow_plaintext_auth` says so."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    tls_mode: TlsMode = "starttls-opportunistic"
    ca_file: Path | None = None
    validate_certs: bool = True
    allow_plaintext_auth: bool = False
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sender: str = Field(default="runwatch <runwatch@localhost>", alias="from")
    timeout_s: float = Field(default=10.0, gt=0)
    connections: int = Field(default=4, ge=1, le=64)

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in _OLD_SMTP_KEYS.items():
                if old in data:
                    raise ConfigError(
                        f"smtp.{old}",
                        f"no longer supported: use {new} (see docs/rules.md, SMTP transport)",
                    )
        return data

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file, "smtp.password_file")


class EmailReceiver(_Section):
    to: list[str] = Field(min_length=1)
    cc: list[str] = Field(default_factory=list)


WebhookFormat = Literal["native", "alertmanager", "azure-common", "slack", "teams", "pagerduty"]
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class WebhookReceiver(_Section):
    url: str
    format: WebhookFormat = "native"
    secret_env: str | None = None
    secret_file: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0)
    # format pagerduty: the integration's routing key (Events API v2), never in the config
    # file itself and never logged; added to the body at send time.
    routing_key_env: str | None = None
    routing_key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _routing_key(self) -> WebhookReceiver:
        given = self.routing_key_env is not None or self.routing_key_file is not None
        if self.format == "pagerduty" and not given:
            raise ValueError("format pagerduty needs routing_key_env or routing_key_file")
        if given and self.format != "pagerduty":
            raise ValueError("routing_key_env/routing_key_file are for format pagerduty only")
        return self

    def secret(self) -> str | None:
        """Read at send time, so a rotated secret is used without a restart."""
        if self.secret_file is not None:
            return read_secret(None, self.secret_file, "webhook.secret_file")
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            redact.register(value)
            return value
        return None

    def routing_key(self) -> str | None:
        """PagerDuty's routing key, read at send time like the secret (and registered for
        redaction likewise)."""
        if self.routing_key_file is not None:
            return read_secret(None, self.routing_key_file, "webhook.routing_key_file")
        if self.routing_key_env:
            value = os.environ.get(self.routing_key_env)
            redact.register(value)
            return value
        return None


class AlertmanagerReceiver(_Section):
    """Alerts pushed to an existing Alertmanager (POST <url>/api/v2/alerts), so that teams
    routing with Alertmanager keep doing so. Credentials are read at send time: a bearer
    token, or basic auth (Alertmanager's own web.config), from the environment or a file."""

    url: str  # the Alertmanager's base URL, e.g. http://alertmanager:9093
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0)
    bearer_token_env: str | None = None
    bearer_token_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    # A stateful alert (threshold, absence, ...) is pushed with endsAt this far after it fired
    # when this receiver gets resolutions (send_resolved: true); the resolution ends it
    # sooner. Without send_resolved, Alertmanager's resolve_timeout ends it.
    hold_firing_s: float = Field(default=7 * 86400.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _one_auth(self) -> AlertmanagerReceiver:
        bearer = self.bearer_token_env is not None or self.bearer_token_file is not None
        password = self.password_env is not None or self.password_file is not None
        if bearer and (self.username is not None or password):
            raise ValueError("give either a bearer token or username/password, not both")
        if (self.username is not None) != password:
            raise ValueError("basic auth needs both username and password_env (or _file)")
        return self

    @property
    def alerts_url(self) -> str:
        return self.url.rstrip("/") + "/api/v2/alerts"

    def secret(self) -> str | None:
        """The password or bearer token, read now (a rotated secret needs no restart) and
        registered for redaction."""
        if self.username is not None:
            value = read_secret(None, self.password_file, "alertmanager.password_file")
            env = self.password_env
        else:
            value = read_secret(None, self.bearer_token_file, "alertmanager.bearer_token_file")
            env = self.bearer_token_env
        if value is None and env:
            value = os.environ.get(env)
            redact.register(value)
        return value

    def authorization(self) -> str | None:
        """The Authorization header: basic auth (Alertmanager's own web.config) or a bearer
        token (a proxy in front of it); None without credentials."""
        secret = self.secret()
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{secret or ''}".encode()).decode()
            redact.register(token)
            return f"Basic {token}"
        return f"Bearer {secret}" if secret else None


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


class ReceiverSettings(_Section):
    email: EmailReceiver | None = None
    webhook: WebhookReceiver | None = None
    alertmanager: AlertmanagerReceiver | None = None
    # Also notify when a stateful alert (threshold, absence, ...) resolves.
    send_resolved: bool = False

    @property
    def kind(self) -> Literal["email", "webhook", "alertmanager"]:
        if self.email is not None:
            return "email"
        return "webhook" if self.webhook is not None else "alertmanager"

    @property
    def given(self) -> int:
        """How many of email, webhook and alertmanager are configured (exactly one is valid)."""
        return sum(x is not None for x in (self.email, self.webhook, self.alertmanager))


class NotifySettings(_Section):
    concurrency: int = Field(default=16, ge=1, le=256)
    claim_batch: int = Field(default=200, ge=1)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    max_age_s: float = Field(default=86_400.0, gt=0)
    # Dead (reason `attempts`) after this many attempts; null: only max_age_s ends retrying.
    max_attempts: int | None = Field(default=None, ge=1)
    # A receiver's Retry-After is honoured up to this many seconds (a longer one waits this).
    retry_after_max_s: float = Field(default=3600.0, gt=0, le=30 * 86_400.0)
    lease_s: float = Field(default=60.0, gt=0)
    link_domain: str = "runwatch.local"  # right-hand side of Message-IDs


class EvaluationSettings(_Section):
    """The scheduled rule kinds (threshold, absence, flatline, duration, tree roll-up)."""

    enabled: bool = True
    tick_s: float = Field(default=10.0, gt=0)  # how often due rules are looked for
    lease_ttl_s: float = Field(default=30.0, gt=0)  # a dead leader's lease expires after it
    # Replay safety: events older than this when their alert is raised notify nobody; the
    # alert is recorded as suppressed (reason stale). null turns it off.
    replay_horizon_s: float | None = Field(default=3600.0, gt=0)
    # At most this many runs that have not ended (and this many child runs of trees) are kept
    # in memory for absence, duration and tree rules; past it the least recently changed is
    # evicted (counted in runwatch_rule_tracked_runs_evicted_total).
    max_tracked_runs: int = Field(default=20_000, ge=1)


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

    @model_validator(mode="after")
    def _receivers(self) -> Settings:
        for name, receiver in self.receivers.items():
            if receiver.given != 1:
                raise ValueError(
                    f"receivers.{name}: give exactly one of email, webhook or alertmanager"
                )
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
