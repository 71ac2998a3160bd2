"""Real test receivers: an SMTP server (aiosmtpd) and a scripted HTTP endpoint (aiohttp)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from consumers.demo.broker import free_port
from consumers.demo.catchers import PostServer


@dataclass
class Mail:
    envelope_from: str
    envelope_to: list[str]
    raw: bytes
    message: EmailMessage
    peer: tuple[str, int]  # the client's address: one per SMTP connection
    at: float  # time.monotonic() at acceptance


class _Collect:
    def __init__(self, reply: Callable[[], str]) -> None:
        self.mails: list[Mail] = []
        self.reply = reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = self.reply()
        if answer.startswith("250"):
            raw: bytes = envelope.original_content or envelope.content
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            mail = Mail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                raw,
                message,
                session.peer,
                time.monotonic(),
            )
            self.mails.append(mail)
        return answer


class SmtpServer:
    """`idle_timeout_s`: the server closes a connection that sent no command for this long
    (aiosmtpd's own timeout, 300 s by default), as real servers do."""

    def __init__(
        self,
        port: int | None = None,
        reply: Callable[[], str] = lambda: "250 OK",
        *,
        idle_timeout_s: float = 300.0,
    ):
        self.port = port or free_port()
        self.handler = _Collect(reply)
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            timeout=idle_timeout_s,
        )

    @property
    def mails(self) -> list[Mail]:
        return self.handler.mails

    @property
    def connections(self) -> int:
        """How many client connections the accepted mails came over."""
        return len({mail.peer for mail in self.mails})

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    peer: tuple[str, int] | None = None  # the client's address: one per TCP connection


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HttpServer(PostServer):
    """POSTs are recorded; `responses[path]` (a function of the hit and how many came to that
    path before) decides the answer, 200 by default. `handlers[path]` answers instead, for a
    receiver that misbehaves (tests/hostile.py); one that hangs can wait for `stopping`."""

    responses: dict[str, Callable[[int], tuple[int, dict[str, str], float]]] = field(
        default_factory=dict
    )
    handlers: dict[str, Handler] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._own_loop()
        self.stopping = asyncio.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    def connections(self, path: str) -> int:
        """How many client connections the POSTs to `path` came over."""
        return len({hit.peer for hit in self.on(path)})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        body = await request.read()
        hit = Hit(request.path, dict(request.headers), body, time.monotonic(), peer)
        before = len(self.on(request.path))
        self.hits.append(hit)
        handler = self.handlers.get(request.path)
        if handler is not None:
            return await handler(request)
        script = self.responses.get(request.path)
        status, headers, delay = script(before) if script else (200, {}, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self.stopping.set)
        super().stop()
