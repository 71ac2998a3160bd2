"""Where notifications go and how: SMTP, the receivers (email, webhook, Alertmanager) with
their formats and secrets, and the `notify:` section (concurrency, retries, leases)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from consumers.config.base import Section, read_secret
from consumers.model import redact
from consumers.model.errors import ConfigError

TlsMode = Literal["starttls-required", "starttls-opportunistic", "implicit", "none"]
_OLD_SMTP_KEYS = {
    "starttls": "smtp.tls_mode: starttls-required (or starttls-opportunistic, the default)",
    "tls": "smtp.tls_mode: implicit",
}


class SmtpSettings(Section):
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
                        f"no longer supported: use {new} (see docs/rules.md, 'SMTP transport')",
                    )
        return data

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file, "smtp.password_file")


class EmailReceiver(Section):
    to: list[str] = Field(min_length=1)
    cc: list[str] = Field(default_factory=list)


WebhookFormat = Literal["native", "alertmanager", "azure-common", "slack", "teams", "pagerduty"]
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class WebhookReceiver(Section):
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


class AlertmanagerReceiver(Section):
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


class ReceiverSettings(Section):
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


class NotifySettings(Section):
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
