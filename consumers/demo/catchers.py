"""Local receivers for the demo: a mail catcher (aiosmtpd) that keeps every mail as an .eml
file and prints one line per mail, and a webhook catcher (aiohttp) that prints what it gets.

They are real servers speaking real SMTP and HTTP, so the demo exercises the same delivery
code as production.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import orjson
from aiohttp import web
from aiosmtpd.controller import Controller

from consumers.demo.broker import free_port


class _MailHandler:
    def __init__(self, folder: Path, printer: Callable[[str], None]) -> None:
        self.folder = folder
        self.printer = printer
        self.count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.count += 1
            number = self.count
        raw: bytes = envelope.original_content or envelope.content
        path = self.folder / f"{number:05d}.eml"
        path.write_bytes(raw)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.printer(
            f"mail  #{number} to {', '.join(envelope.rcpt_tos)}: {message['Subject']} ({path.name})"
        )
        return "250 OK"


class MailCatcher:
    """An SMTP server on 127.0.0.1 that accepts everything and keeps it."""

    def __init__(self, folder: Path, printer: Callable[[str], None] = print) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.handler = _MailHandler(folder, printer)
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> MailCatcher:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


class PostServer:
    """An aiohttp server on 127.0.0.1 that answers every POST with `_handle`, on an event loop
    of its own in a daemon thread, so a synchronous caller (the demo, a test) can run it beside
    code that has its own loop."""

    port: int

    def _own_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class WebhookCatcher(PostServer):
    """Prints one line per POST."""

    def __init__(self, printer: Callable[[str], None] = print) -> None:
        self.port = free_port()
        self.printer = printer
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self._own_loop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((request.path, dict(request.headers), body))
        summary = body[:160].decode("utf-8", "replace")
        try:
            doc = orjson.loads(body)
            if isinstance(doc, dict):
                summary = str(doc.get("text") or doc.get("version") or list(doc)[:5])
        except orjson.JSONDecodeError:
            pass
        signed = "signed" if "X-Runwatch-Signature" in request.headers else "unsigned"
        self.printer(f"hook  {request.path} {len(body)} bytes, {signed}: {summary}")
        return web.Response(text="ok")
