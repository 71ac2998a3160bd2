"""A real aiosmtpd server speaking STARTTLS or implicit TLS with a self-signed certificate
made by the `openssl` command line, recording for each AUTH and each mail whether the
connection was encrypted at that moment."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from consumers.demo.broker import free_port


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def make_certificate(folder: Path, name: str = "server") -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return Certificate(cert, key)


@dataclass
class Seen:
    """One AUTH or one mail as the server saw it."""

    encrypted: bool
    username: str = ""
    password: str = ""
    raw: bytes = b""
    rcpt: list[str] = field(default_factory=list)


def _encrypted(server: Any, session: Any) -> bool:
    """STARTTLS sets session.ssl; implicit TLS shows only on the transport."""
    transport = getattr(server, "transport", None)
    on_wire = transport is not None and transport.get_extra_info("ssl_object") is not None
    return session.ssl is not None or on_wire


class _Handler:
    def __init__(self) -> None:
        self.mails: list[Seen] = []
        self.logins: list[Seen] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content
        self.mails.append(Seen(_encrypted(server, session), raw=raw, rcpt=list(envelope.rcpt_tos)))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.logins.append(
                Seen(_encrypted(server, session), data.login.decode(), data.password.decode())
            )
        return AuthResult(success=True)


class TlsSmtpServer:
    """mode: "starttls" (offers STARTTLS), "implicit" (TLS from the first byte) or "plain"
    (no TLS at all). AUTH is accepted over plaintext too: the server is the careless one, so
    that a test sees what the client chooses to send."""

    def __init__(self, certificate: Certificate | None, mode: str) -> None:
        self.port = free_port()
        self.handler = _Handler()
        kwargs: dict[str, Any] = {
            "authenticator": self.handler.authenticate,
            "auth_require_tls": False,
        }
        context = None
        if certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificate.cert, certificate.key)
        if mode == "starttls":
            kwargs["tls_context"] = context
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=context if mode == "implicit" else None,
            server_hostname="localhost",
            **kwargs,
        )

    @property
    def mails(self) -> list[Seen]:
        return self.handler.mails

    @property
    def logins(self) -> list[Seen]:
        return self.handler.logins

    def __enter__(self) -> TlsSmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
