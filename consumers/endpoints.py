"""The operations port: `/metrics` for Prometheus, `/healthz` (the process answers) and
`/readyz` (Kafka connected, store reachable, rules loaded) for orchestrators.

A small threading HTTP server of the standard library, so a slow store check or scrape never
waits behind the asyncio dispatcher. Optional bearer or basic auth; the secret is compared in
constant time and never logged (the access log is off).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumers.errors import ConfigError
from consumers.settings import EndpointAuth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


Readiness = Callable[[], Mapping[str, Check]]


def authorized(auth: EndpointAuth | None, header: str | None) -> bool:
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


class _Handler(BaseHTTPRequestHandler):
    server: OpsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in {"/metrics", "/healthz", "/readyz"}:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        ops = self.server
        needs_auth = path == "/metrics" or (ops.auth is not None and ops.auth.protect_probes)
        if needs_auth and not authorized(ops.auth, self.headers.get("Authorization")):
            assert ops.auth is not None
            realm = "Bearer" if ops.auth.scheme == "bearer" else 'Basic realm="runwatch"'
            self._send(401, b"unauthorized\n", "text/plain; charset=utf-8", realm)
            return
        if path == "/metrics":
            self._send(200, generate_latest(ops.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b'{"status":"ok"}\n', "application/json")
        else:
            checks = ops.readiness()
            ready = all(check.ok for check in checks.values())
            body: dict[str, Any] = {
                "ready": ready,
                "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
            }
            self._send(200 if ready else 503, orjson.dumps(body) + b"\n", "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, challenge: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if challenge is not None:
            self.send_header("WWW-Authenticate", challenge)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: scrapes every few seconds are noise, and headers hold secrets."""


class OpsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        readiness: Readiness,
        auth: EndpointAuth | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.registry = registry
        self.readiness = readiness
        self.auth = auth
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> OpsServer:
        self._thread = threading.Thread(target=self.serve_forever, name="ops-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
