"""Webhook receivers that misbehave on purpose, for tests/test_hostile_receivers.py.

`HttpServer.handlers[path]` takes the aiohttp handlers below (huge bodies, huge or too many
headers, redirects, a receiver that never answers). Bytes no HTTP server would send (a
garbage status line, a response cut off mid-way) come from `RawServer`, a TCP server that
reads the request and writes whatever it is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from aiohttp import web
from multidict import CIMultiDict

from consumers.demo.broker import free_port
from tests.servers import Handler, HttpServer

MB = 2**20


class HugeBody:
    """Answers `status` with a `size`-byte body, written at the client's pace. `sent` is how
    much the client took before it hung up: a client that reads the body whole takes it all."""

    def __init__(self, status: int, size: int = 50 * MB) -> None:
        self.status = status
        self.size = size
        self.sent = 0
        self.done = threading.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status, headers={"Content-Type": "text/plain"})
        response.content_length = self.size
        chunk = b"x" * (64 * 1024)
        try:
            await response.prepare(request)
            while self.sent < self.size:
                await response.write(chunk)  # waits for the socket to drain
                self.sent += len(chunk)
            await response.write_eof()
        except ConnectionError:  # the client closed the connection: what we want to see
            pass
        finally:
            self.done.set()
        return response


def headers(status: int, values: CIMultiDict[str] | dict[str, str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers=values, text="headers")

    return handler


def huge_header(status: int = 200, size: int = 100_000) -> Handler:
    return headers(status, {"X-Huge": "a" * size})


def many_headers(status: int = 200, count: int = 1000) -> Handler:
    values: CIMultiDict[str] = CIMultiDict()
    for i in range(count):
        values.add(f"X-Header-{i}", str(i))
    return headers(status, values)


def redirect(status: int, location: str) -> Handler:
    return headers(status, {"Location": location})


def never_answers(server: HttpServer) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await server.stopping.wait()
        return web.Response(status=200)

    return handler


class RawServer:
    """Reads one request (headers and a Content-Length body), writes `reply`, then closes the
    connection (or keeps it open without a word when `hang`)."""

    def __init__(self, reply: bytes, *, hang: bool = False) -> None:
        self.reply = reply
        self.hang = hang
        self.port = free_port()
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.requests += 1
            writer.write(self.reply)
            await writer.drain()
            if self.hang:
                await asyncio.sleep(3600)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def start(self) -> RawServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
