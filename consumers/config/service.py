"""The service's own sections: where it connects (kafka, store), what it serves (metrics,
the endpoints' auth, HTTP ingest), how it logs, and the scheduled rules' evaluation."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from consumers.config.base import Section, read_secret
from consumers.model.errors import ConfigError


class KafkaSettings(Section):
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
    # Group membership (docs/deploys.md). A replica
    # that dies without leaving keeps its partitions this long; 6 s is the least Apache Kafka
    # (group.min.session.timeout.ms) and Event Hubs accept. The bundled broker holds every
    # rebalance for about half of it. A heartbeat is when a member hears of a rebalance.
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=500, ge=100)
    # A rebalance waits this long at most for a member busy with a batch (a member that
    # polls no more for this long leaves the group). kafka-python's default.
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    # Static membership (KIP-345): a stable name per replica (a StatefulSet pod's name)
    # rejoins with its old partitions and no rebalance if back within session_timeout_ms;
    # it does not leave the group on SIGTERM. None: dynamic membership.
    group_instance_id: str | None = Field(
        default=None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$"
    )
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

    @model_validator(mode="after")
    def _heartbeat(self) -> KafkaSettings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms}); a third of it at most is usual"
            )
        return self

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


class StoreSettings(Section):
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


class EndpointAuth(Section):
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


class MetricsSettings(Section):
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


class HttpIngestSettings(Section):
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


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class EvaluationSettings(Section):
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


def is_loopback(host: str) -> bool:
    """Whether a listen host reaches this machine only (a name or "" / 0.0.0.0 / :: do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" / 0.0.0.0 / :: (every interface)
