"""Who is using the console, and whether a form came from one of its own pages.

Stateless, so that nothing grows with the number of visitors and any replica can check what
another issued: a session is a signed cookie `sid.expires.user.mac`, and the CSRF token of
a session is an HMAC of its id. The signing key derives from the ops listener's secret
(`metrics.auth`), so rotating the secret ends every session; without auth (loopback only)
it is random per process.

The cookie is HttpOnly and SameSite=Strict: a cross-site form post arrives without it, so
without a token that verifies, and is refused (403) before anything else is looked at.
A browser that sends basic auth by itself is authenticated by its Authorization header
(consumers.config.auth.authorized, the check every ops endpoint uses); the login form serves
bearer tokens and browsers whose user cancelled the basic-auth prompt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

from consumers.config.auth import authorized
from consumers.config.service import EndpointAuth
from consumers.model.errors import ConfigError

COOKIE = "runwatch_console"
_ANONYMOUS = "-"


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    expires: int
    user: str | None  # set once logged in through the form


class Sessions:
    def __init__(self, auth: EndpointAuth | None, lifetime_s: float) -> None:
        self.auth = auth
        self.lifetime_s = lifetime_s
        self._random_key = os.urandom(32)

    def _key(self) -> bytes | None:
        """None when the secret cannot be read: then nothing verifies (refuse, loudly
        elsewhere: the ops endpoints log it)."""
        if self.auth is None:
            return self._random_key
        try:
            secret = self.auth.secret()
        except ConfigError:
            return None
        return hmac.new(secret.encode(), b"runwatch console session v1", hashlib.sha256).digest()

    def _mac(self, key: bytes, text: str) -> str:
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def new(self, user: str | None = None, now: float | None = None) -> tuple[Session, str]:
        """A fresh session (a new id at every login: no fixation) and its cookie value."""
        key = self._key()
        session = Session(
            secrets.token_urlsafe(18), int((now or time.time()) + self.lifetime_s), user
        )
        if key is None:
            return session, ""
        name = _ANONYMOUS if user is None else base64.urlsafe_b64encode(user.encode()).decode()
        body = f"{session.sid}.{session.expires}.{name}"
        return session, f"{body}.{self._mac(key, body)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie names, if it is intact and unexpired."""
        key = self._key()
        if not cookie or key is None or len(cookie) > 512:
            return None
        parts = cookie.split(".")
        if len(parts) != 4:
            return None
        sid, expires, name, mac = parts
        if not hmac.compare_digest(mac, self._mac(key, f"{sid}.{expires}.{name}")):
            return None
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        if name == _ANONYMOUS:
            return Session(sid, int(expires), None)
        try:
            user = base64.urlsafe_b64decode(name.encode()).decode()
        except (binascii.Error, ValueError):
            return None
        return Session(sid, int(expires), user)

    def csrf(self, session: Session) -> str:
        key = self._key()
        return "" if key is None else self._mac(key, f"csrf:{session.sid}")

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        expected = self.csrf(session)
        return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())

    def who(self, header: str | None, session: Session | None) -> str | None:
        """The authenticated user of a request, or None: anyone when there is no auth, the
        Authorization header's user, else the session's login."""
        auth = self.auth
        if auth is None:
            return "console"
        if header and authorized(auth, header):
            return basic_user(header) or "bearer-token"
        return session.user if session is not None else None

    def login(self, username: str, secret: str) -> bool:
        """The form's credentials, checked exactly as an Authorization header would be."""
        auth = self.auth
        if auth is None:
            return True
        if auth.scheme == "bearer":
            return authorized(auth, f"Bearer {secret}")
        pair = base64.b64encode(f"{username}:{secret}".encode()).decode()
        return authorized(auth, f"Basic {pair}")


def basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).partition(b":")[0].decode()
    except (binascii.Error, ValueError):
        return None
