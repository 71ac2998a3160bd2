"""Credentials out of every text runwatch shows or keeps: log lines, CLI output, stored errors.

One function, `redact(text)`, applied at the three exits (the logging filter of
consumers/telemetry/logs.py, the CLI's output stream in consumers/cli/console.py, and the
outbox's stored error texts), so that no caller has to remember it. It lives in `model/`
because every layer, the store included, needs it and it imports nothing. It masks:

- passwords in URLs: `postgresql://u:pw@h/db` -> `postgresql://u:***@h/db`;
- secret-looking `name=value` pairs, in query strings and connection strings alike
  (`?token=...`, `sig=...`, `SharedAccessKey=...`, `password=...`) -> `name=***`;
- `Bearer <token>` / `Basic <credentials>`;
- incoming-webhook URLs, whose path IS the credential (Slack, Teams, Discord, ...; and every
  webhook URL in the config, registered at start-up): scheme and host kept, the path and
  query replaced by a short hash, `https://hooks.slack.com/…#a1b2c3`, so two receivers can
  still be told apart;
- exact secret values registered at start-up or when read (configured passwords, tokens,
  webhook signing secrets, header values), wherever they appear -> `***`.

Redacting twice gives the same text as once (every exit may see a line another already
cleaned). Values shorter than MIN_SECRET_LENGTH are not registered: masking a two-letter
password everywhere would garble every line without protecting much.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

MASK = "***"
MIN_SECRET_LENGTH = 6
_HASHED = "/…#"

# Hosts whose webhook URLs carry the credential in the path (or the query).
_WEBHOOK_HOSTS = (
    "hooks.slack.com",
    "hooks.slack-gov.com",
    "webhook.office.com",
    "outlook.office.com",
    "outlook.office365.com",
    "discord.com",
    "discordapp.com",
    "chat.googleapis.com",
    "logic.azure.com",
    "api.powerplatform.com",
    "hooks.zapier.com",
    "maker.ifttt.com",
    "api.telegram.org",
)

# scheme://authority then the rest up to whitespace, a quote, a bracket or a backslash (a
# JSON escape must survive: the rest is replaced whole).
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]{1,20})://([^\s/?#'\"<>\\]*)([^\s'\"<>\\]*)")
# name=value, the name preceded by nothing word-like; the value up to a separator.
_PAIR = re.compile(r"(?<![\w.\-])([A-Za-z][\w.\-]{0,40})=([^\s&;,'\"<>\\]+)")
_AUTH = re.compile(r"\b(Bearer|Basic)\s+([A-Za-z0-9._~+/=\-]{8,})", re.IGNORECASE)

_SECRET_NAMES = frozenset(
    {
        "password", "passwd", "pwd", "pass", "secret", "token", "key", "apikey", "api_key",
        "api-key", "access_key", "accesskey", "access_token", "refresh_token", "id_token",
        "client_secret", "sig", "signature", "code", "auth", "authorization", "credential",
        "credentials", "sharedaccesskey", "sharedaccesssignature", "sas", "session",
        "sessionid", "private_key", "x-amz-signature", "x-amz-credential",
        "x-amz-security-token", "x-goog-signature", "x-goog-credential", "sasl_password",
    }
)  # fmt: skip
_SECRET_SUFFIXES = ("password", "_token", "-token", "_secret", "-secret", "_key", "-key")


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


class _Registry:
    """Known secret values and configured webhook URLs; written rarely (start-up, a secret
    file read), read on every redaction: readers take the current immutable snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None
        self.webhooks: frozenset[tuple[str, str, str]] = frozenset()  # scheme, netloc, path

    def add_values(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if not value or len(value) < MIN_SECRET_LENGTH:
                continue
            forms.add(value)
            forms.add(quote(value, safe=""))  # as it appears inside a URL
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')  # inside JSON
            forms.add(escaped)
        with self._lock:
            merged = self.values | forms
            if merged == self.values:
                return
            ordered = sorted(merged, key=len, reverse=True)  # longest first
            self.pattern = re.compile("|".join(re.escape(v) for v in ordered))
            self.values = merged

    def add_webhook(self, scheme: str, netloc: str, path: str) -> None:
        with self._lock:
            self.webhooks = self.webhooks | {(scheme.lower(), netloc.lower(), path)}


_registry = _Registry()


def register(*values: str | None) -> None:
    """Exact secret values to mask wherever they appear (start-up, and each secret read)."""
    _registry.add_values(v for v in values if v)


def register_url(url: str | None) -> None:
    """A URL from the config: its password is a secret; a webhook URL's path is one too."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return
    register(password)
    if parts.scheme in {"http", "https"} and parts.hostname:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        path = parts.path.rstrip("/")
        _registry.add_webhook(parts.scheme, netloc, path)
        last = path.rsplit("/", 1)[-1]
        if _token_like(last):  # the credential, also when shown without its URL
            register(last)
        register(parts.query if len(parts.query) >= 8 else None)


def _token_like(segment: str) -> bool:
    """A path segment that is a credential (Slack's 24 characters, Teams' GUIDs, Discord's
    tokens) rather than a word such as "alerts" that must stay readable everywhere."""
    return len(segment) >= 16 and any(c.isdigit() for c in segment)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]


def _is_webhook(scheme: str, host: str, netloc: str, path: str) -> bool:
    if scheme not in {"http", "https"}:
        return False
    if any(host == known or host.endswith("." + known) for known in _WEBHOOK_HOSTS):
        return True
    return any(
        scheme == s and netloc == n and (path == p or path.startswith(p + "/") or not p)
        for s, n, p in _registry.webhooks
    )


def _url(match: re.Match[str]) -> str:
    scheme, authority, rest = match.group(1), match.group(2), match.group(3)
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        authority = f"{user}:{MASK}@{hostport}"
    host = hostport.rsplit(":", 1)[0] if not hostport.endswith("]") else hostport
    host = host.strip("[]").lower()
    if rest.startswith(_HASHED):
        return f"{scheme}://{authority}{rest}"
    path = rest.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    if rest and _is_webhook(scheme.lower(), host, hostport.lower(), path):
        return f"{scheme}://{authority}{_HASHED}{short_hash(rest)}"
    return f"{scheme}://{authority}{_PAIR.sub(_pair, rest)}"


def _pair(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value == MASK or not _secret_name(name):
        return match.group(0)
    return f"{name}={MASK}"


def redact(text: str) -> str:
    """`text` with every credential above masked; idempotent."""
    if "://" in text:  # first: a webhook's hash is of its real path, not of a mask
        text = _URL.sub(_url, text)
    pattern = _registry.pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "=" in text:
        text = _PAIR.sub(_pair, text)
    return _AUTH.sub(lambda m: f"{m.group(1)} {MASK}", text)


def url(value: str) -> str:
    """How a webhook URL is shown anywhere (errors, logs): scheme and host, and a short hash
    of the rest, whatever the host: the path of a configured webhook may be its secret."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"(a URL){_HASHED}{short_hash(value)}"
    rest = value.split(parts.netloc, 1)[1] if parts.netloc else ""
    if not rest or rest == "/":
        return f"{parts.scheme}://{host}{port}{rest}"
    return f"{parts.scheme}://{host}{port}{_HASHED}{short_hash(rest)}"
