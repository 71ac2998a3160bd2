"""Service configuration: one YAML file, then `RUNWATCH_SECTION__KEY` environment overrides.

Every section forbids unknown keys, so a typo stops start-up with the key's dotted path
instead of silently running on a default.
"""

from __future__ import annotations

import os
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

from consumers.errors import ConfigError
from consumers.limits import IngestLimits
from consumers.noise.config import NoiseSettings

ENV_PREFIX = "RUNWATCH_"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def read_secret(value: SecretStr | None, file: Path | None, key: str) -> str | None:
    """A secret given inline (usually through the environment) or as a file (Kubernetes
    Secret mounts); the file wins so that rotating it needs no restart of the config."""
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {file}: {exc.strerror}") from None
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

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python's consumer, producer and admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            password = read_secret(
                self.sasl_password, self.sasl_password_file, "kafka.sasl_password"
            )
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
            value = read_secret(self.password, self.password_file, "metrics.auth.password")
        else:
            value = read_secret(
                self.bearer_token, self.bearer_token_file, "metrics.auth.bearer_token"
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


REPO_ROOT = Path(__file__).resolve().parent.parent


def shipped(name: str) -> Path:
    """The rule set and templates shipped beside the package (a source or editable install)."""
    return REPO_ROOT / name


class SmtpSettings(_Section):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    tls: bool = False  # implicit TLS (port 465)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sender: str = Field(default="runwatch <runwatch@localhost>", alias="from")
    timeout_s: float = Field(default=10.0, gt=0)
    validate_certs: bool = True
    connections: int = Field(default=4, ge=1, le=64)

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file, "smtp.password")


class EmailReceiver(_Section):
    to: list[str] = Field(min_length=1)
    cc: list[str] = Field(default_factory=list)


WebhookFormat = Literal["native", "alertmanager", "azure-common", "slack", "teams"]


class WebhookReceiver(_Section):
    url: str
    format: WebhookFormat = "native"
    secret_env: str | None = None
    secret_file: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    def secret(self) -> str | None:
        """Read at send time, so a rotated secret is used without a restart."""
        if self.secret_file is not None:
            return read_secret(None, self.secret_file, "webhook.secret_file")
        if self.secret_env:
            return os.environ.get(self.secret_env)
        return None


class ReceiverSettings(_Section):
    email: EmailReceiver | None = None
    webhook: WebhookReceiver | None = None
    # Also notify when a stateful alert (threshold, absence, ...) resolves.
    send_resolved: bool = False

    @property
    def kind(self) -> Literal["email", "webhook"]:
        return "email" if self.email is not None else "webhook"


class NotifySettings(_Section):
    concurrency: int = Field(default=16, ge=1, le=256)
    claim_batch: int = Field(default=200, ge=1)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    max_age_s: float = Field(default=86_400.0, gt=0)
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
    smtp: SmtpSettings = SmtpSettings()
    receivers: dict[str, ReceiverSettings] = Field(default_factory=dict)
    notify: NotifySettings = NotifySettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    noise: NoiseSettings = NoiseSettings()  # grouping, silences, inhibition, routing
    ingest: IngestLimits = IngestLimits()  # what one message may hold (consumers.limits)
    http_ingest: HttpIngestSettings = (
        HttpIngestSettings()
    )  # Event Grid push (consumers.http_ingest)

    @model_validator(mode="after")
    def _receivers(self) -> Settings:
        for name, receiver in self.receivers.items():
            if (receiver.email is None) == (receiver.webhook is None):
                raise ValueError(f"receivers.{name}: give exactly one of email or webhook")
        return self

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
