"""The operations port: `/metrics` for Prometheus, `/healthz` (the process answers) and
`/readyz` (Kafka connected, store reachable, rules loaded) for orchestrators.

Bounded whatever the clients do: an aiohttp server on its own event loop thread (a slow
store check or scrape never waits behind the asyncio dispatcher, and no thread per
connection: 3,000 half-sent requests grew the old threading server to 850 threads), with
- a header deadline: a connection that has not delivered a complete request within
  `header_timeout_s` of connecting is closed (and between requests, aiohttp's keep-alive
  timeout); request bodies are never read, and a request with an unread body ends its
  connection;
- a connection cap: past `max_connections`, the oldest connection with no request in
  progress is closed to make room (so a flood of idle connections cannot lock a scrape
  out), and a new connection is refused only when every slot is serving a request;
- the blocking work (rendering the registry, the readiness checks, reading a secret file)
  on a pool of two threads.

Auth is optional: a bearer token or basic auth, compared in constant time, never logged
(no access log). Without credentials the probes reveal nothing but status: /readyz names
each check and whether it passed, and gives the details (servers, paths, errors) only to an
authenticated request; the details of a failing check go to the log instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumers.config.auth import authorized
from consumers.config.service import EndpointAuth, is_loopback

log = logging.getLogger(__name__)

PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


Readiness = Callable[[], Mapping[str, Check]]
# More routes on the same bounded server (the web console, consumers/webconsole): called
# with the application before it starts, and the server (for its auth and bounds).
Extension = Callable[[web.Application, "OpsServer"], None]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    challenge: str | None = None


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with what the cap and the deadline need: when
    it connected, whether a request is in progress, whether one ever started."""

    __slots__ = ("busy", "inner", "ops", "served", "transport")

    def __init__(self, ops: OpsServer, inner: asyncio.Protocol) -> None:
        self.ops, self.inner = ops, inner
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.served = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ops._opened(self)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ops._closed(self)
        self.inner.connection_lost(exc)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class OpsServer:
    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        readiness: Readiness,
        auth: EndpointAuth | None,
        *,
        max_connections: int = 64,
        header_timeout_s: float = 10.0,
        idle_timeout_s: float = 30.0,
        extensions: tuple[Extension, ...] = (),
    ) -> None:
        self.address = address
        self.registry = registry
        self.readiness = readiness
        self.auth = auth
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.extensions = extensions
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ops-http", daemon=True)
        self._work = ThreadPoolExecutor(2, thread_name_prefix="ops-http-work")
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._live: dict[_Connection, None] = {}  # insertion order: oldest first
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._failing: frozenset[str] = frozenset()
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def connections(self) -> int:
        return len(self._live)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> OpsServer:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        except BaseException:
            self._shutdown_loop()
            raise
        host = self.address[0]
        if self.auth is None and not is_loopback(host):
            log.warning(
                "metrics endpoint on %s:%d has no auth: anyone who can reach it reads every "
                "metric; set metrics.auth, or listen on 127.0.0.1 (docs/security.md)",
                host or "0.0.0.0",
                self._port,
            )
        return self

    async def _start(self) -> None:
        # Bodies: only an extension's routes read one (a console form), up to 64 KiB.
        app = web.Application(middlewares=[self._track], client_max_size=64 * 1024)
        for path in PATHS:
            app.router.add_get(path, self._handle)
        for extend in self.extensions:
            extend(app, self)
        self._runner = web.AppRunner(
            app,
            access_log=None,  # scrapes every few seconds are noise, and headers hold secrets
            keepalive_timeout=self.idle_timeout_s,
            lingering_time=0,  # a body nobody reads ends the connection
            max_line_size=8190,
            max_field_size=8190,
        )
        await self._runner.setup()
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            await self._runner.cleanup()
            raise
        self._port = int(sock.getsockname()[1])
        self._server = await self._loop.create_server(self._protocol, sock=sock)

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
            except (TimeoutError, RuntimeError) as exc:
                log.warning("metrics endpoint did not stop cleanly: %s", exc)
        self._shutdown_loop()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._live):
            connection.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
        self._work.shutdown(wait=False, cancel_futures=True)

    # -- the bounds ----------------------------------------------------------------------

    def _protocol(self) -> asyncio.Protocol:
        if len(self._live) >= self.max_connections:
            victim = next((c for c in self._live if not c.busy), None)
            if victim is None:
                return _Refused()  # every slot is serving a request: come back later
            self._forget(victim)
            victim.close()
        assert self._runner is not None and self._runner.server is not None
        connection = _Connection(self, self._runner.server())
        self._live[connection] = None
        return connection

    def _opened(self, connection: _Connection) -> None:
        if connection.transport is not None:
            self._by_transport[connection.transport] = connection
        self._loop.call_later(self.header_timeout_s, self._deadline, connection)

    def _deadline(self, connection: _Connection) -> None:
        if not connection.served and not connection.busy:
            connection.close()  # no complete request in time: a slow or half-sent client

    def _closed(self, connection: _Connection) -> None:
        self._forget(connection)

    def _forget(self, connection: _Connection) -> None:
        self._live.pop(connection, None)
        if connection.transport is not None:
            self._by_transport.pop(connection.transport, None)

    @web.middleware
    async def _track(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        transport = request.transport
        connection = self._by_transport.get(transport) if transport is not None else None
        if connection is not None:
            connection.busy = connection.served = True
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            if connection is not None:
                connection.busy = False

    # -- the answers ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.body_exists:
            return web.Response(status=413, text="no request body expected\n")
        header = request.headers.get("Authorization")
        answer = await self._loop.run_in_executor(self._work, self.answer, request.path, header)
        headers = {"Cache-Control": "no-store", "Content-Type": answer.content_type}
        if answer.challenge is not None:
            headers["WWW-Authenticate"] = answer.challenge
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    def answer(self, path: str, header: str | None) -> Answer:
        """The response to a GET of `path`: synchronous, on the worker pool."""
        if path not in PATHS:
            return Answer(404, b"not found\n", "text/plain; charset=utf-8")
        auth = self.auth
        probe = path != "/metrics"
        needs_auth = auth is not None and (not probe or auth.protect_probes)
        authenticated = auth is not None and authorized(auth, header)
        if needs_auth and not authenticated:
            assert auth is not None
            realm = "Bearer" if auth.scheme == "bearer" else 'Basic realm="runwatch"'
            return Answer(401, b"unauthorized\n", "text/plain; charset=utf-8", realm)
        if path == "/metrics":
            return Answer(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return Answer(200, b'{"status":"ok"}\n', "application/json")
        checks = self.readiness()
        ready = all(check.ok for check in checks.values())
        self._log_readiness(checks)
        body: dict[str, Any] = {
            "ready": ready,
            "checks": {
                name: {"ok": c.ok, "detail": c.detail} if authenticated else {"ok": c.ok}
                for name, c in checks.items()
            },
        }
        return Answer(200 if ready else 503, orjson.dumps(body) + b"\n", "application/json")

    def _log_readiness(self, checks: Mapping[str, Check]) -> None:
        """What an unauthenticated /readyz no longer shows, the log says once per change."""
        failing = frozenset(name for name, check in checks.items() if not check.ok)
        if failing == self._failing:
            return
        self._failing = failing
        if failing:
            details = "; ".join(f"{name}: {checks[name].detail}" for name in sorted(failing))
            log.warning("not ready: %s", details)
        else:
            log.info("ready")
