"""The one credential check of the ops listener (metrics, probes, the web console): a bearer
token or HTTP basic auth compared in constant time. It lives beside the settings it reads so
that every HTTP side (service/endpoints.py, webconsole/) asks the same question."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from consumers.config.service import EndpointAuth
from consumers.model.errors import ConfigError

log = logging.getLogger(__name__)


def authorized(auth: EndpointAuth | None, header: str | None) -> bool:
    """Whether the Authorization header carries the configured secret (always, without auth)."""
    if auth is None:
        return True
    if not header:
        return False
    try:
        secret = auth.secret()
    except ConfigError as exc:  # an unreadable secret file refuses everyone, loudly
        log.error("endpoint auth: %s", exc)
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if auth.scheme == "bearer":
        return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), secret.encode())
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    expected_user = (auth.username or "").encode()
    same_user = hmac.compare_digest(user, expected_user)
    same_password = hmac.compare_digest(password, secret.encode())
    return bool(sep) and same_user and same_password
