"""The console's HTTP side on the ops server: routes, sessions, CSRF, security headers.

Every request: the session cookie read (a fresh anonymous one issued when missing), the
user established (consumers.webconsole.session), and, for a POST, the CSRF token checked
first: a POST without a valid token is 403 whoever sends it. Page work (store reads,
rendering) runs on the console's own two threads, so a slow page never holds up the
event loop that answers /metrics and the probes. Form bodies are read with the ops
server's header deadline and within its 64 KiB body limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib.resources import files
from typing import TYPE_CHECKING

from aiohttp import web
from jinja2 import TemplateError

from consumers.config.settings import Settings
from consumers.model.errors import RunwatchError
from consumers.store.engine import Store
from consumers.webconsole.causes import cause_table
from consumers.webconsole.pages import Answer, Ask, Page, Pages, Redirect, message, safe_back
from consumers.webconsole.render import environment, render
from consumers.webconsole.session import COOKIE, Session, Sessions

if TYPE_CHECKING:
    from consumers.service.endpoints import OpsServer

log = logging.getLogger(__name__)

PREFIX = "/console"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CSS = files("consumers.webconsole").joinpath("static/console.css").read_bytes()

PageFn = Callable[[Ask], Answer]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    """Install with `OpsServer(..., extensions=(console.install,))`."""

    def __init__(self, store: Store, settings: Settings, wake: Callable[[], None]) -> None:
        self.sessions = Sessions(settings.metrics.auth, settings.console.session_hours * 3600)
        self.pages = Pages(
            store,
            cause_table(settings.rules_dir),
            wake,
            failures_shown=settings.console.failures_shown,
        )
        self.env = environment()
        self._work = ThreadPoolExecutor(2, thread_name_prefix="console")
        self._body_timeout_s = 10.0

    def install(self, app: web.Application, ops: OpsServer) -> None:
        self._body_timeout_s = ops.header_timeout_s
        p = self.pages
        get = app.router.add_get
        post = app.router.add_post
        get(PREFIX, self._redirect_home)
        get(f"{PREFIX}/", self._page(p.failures))
        get(f"{PREFIX}/runs/{{run_id}}", self._page(p.run))
        get(f"{PREFIX}/notifications", self._page(p.notifications))
        get(f"{PREFIX}/silences", self._page(p.silences))
        get(f"{PREFIX}/login", self._login_form)
        get(f"{PREFIX}/static/console.css", self._css)
        post(f"{PREFIX}/silences", self._form(p.create_silence))
        post(f"{PREFIX}/silences/{{silence_id}}/expire", self._form(p.expire))
        post(f"{PREFIX}/notifications/{{notification_id}}/retry", self._form(p.retry))
        post(f"{PREFIX}/login", self._login)
        post(f"{PREFIX}/logout", self._logout)
        app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, _app: web.Application) -> None:
        self._work.shutdown(wait=False, cancel_futures=True)

    # -- plumbing ------------------------------------------------------------------------

    def _session(self, request: web.Request) -> tuple[Session, str | None]:
        """The request's session, and a cookie to set when it had none (or a bad one)."""
        session = self.sessions.read(request.cookies.get(COOKIE))
        if session is not None:
            return session, None
        fresh, cookie = self.sessions.new()
        return fresh, cookie

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str,
        cookie: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        response = web.Response(status=status, body=body, content_type=content_type)
        if content_type == "text/html":
            response.charset = "utf-8"
        response.headers.update(_HEADERS)
        if headers:
            response.headers.update(headers)
        if cookie:
            response.set_cookie(
                COOKIE,
                cookie,
                path=PREFIX,
                httponly=True,
                samesite="Strict",
                max_age=int(self.sessions.lifetime_s),
            )
        return response

    async def _html(
        self,
        page: Page,
        session: Session,
        user: str | None,
        cookie: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        context = {
            "nav": "",
            "user": user,
            "csrf": self.sessions.csrf(session),
            "can_logout": session.user is not None,
            **page.context,
        }
        loop = asyncio.get_running_loop()
        try:
            html = await loop.run_in_executor(self._work, render, self.env, page.template, context)
        except TemplateError:
            log.exception("console: template %s failed", page.template)
            return self._respond(500, b"console page failed; see the log\n", "text/plain", cookie)
        return self._respond(page.status, html.encode(), "text/html", cookie, headers)

    def _unauthenticated(
        self, request: web.Request, session: Session, cookie: str | None, failed: bool = False
    ) -> Page:
        auth = self.sessions.auth
        scheme = auth.scheme if auth is not None else "bearer"
        target = request.path_qs if request.method == "GET" else f"{PREFIX}/"
        return Page(
            "login.html",
            {"scheme": scheme, "next": safe_back(target, f"{PREFIX}/"), "failed": failed},
            401,
        )

    def _challenge(self) -> dict[str, str]:
        auth = self.sessions.auth
        if auth is not None and auth.scheme == "basic":
            return {"WWW-Authenticate": 'Basic realm="runwatch"'}
        return {}

    async def _run(self, fn: PageFn, ask: Ask) -> Answer:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._work, fn, ask)
        except RunwatchError as exc:  # the store unreachable, and the like
            log.warning("console: %s", exc)
            return message(503, "Not available", "The store did not answer; see the log.")

    async def _finish(
        self, answer: Answer, session: Session, user: str | None, cookie: str | None
    ) -> web.Response:
        if isinstance(answer, Redirect):
            return self._respond(303, b"", "text/plain", cookie, {"Location": answer.location})
        return await self._html(answer, session, user, cookie)

    # -- handlers ------------------------------------------------------------------------

    def _page(self, fn: PageFn) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.body_exists:
                return web.Response(status=413, text="no request body expected\n")
            session, cookie = self._session(request)
            user = self.sessions.who(request.headers.get("Authorization"), session)
            if user is None:
                page = self._unauthenticated(request, session, cookie)
                return await self._html(page, session, None, cookie, self._challenge())
            ask = Ask(
                query={k: v for k, v in request.query.items()},
                path=dict(request.match_info),
                form={},
                user=user,
                matches=tuple(request.query.getall("match", [])),
            )
            answer = await self._run(fn, ask)
            return await self._finish(answer, session, user, cookie)

        return handle

    async def _read_form(self, request: web.Request) -> dict[str, str] | None:
        """The form's text fields; None when it did not arrive in time or is not a form.
        Too large a body (past the ops server's 64 KiB) raises 413 from aiohttp."""
        try:
            data = await asyncio.wait_for(request.post(), self._body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            raise
        except (TimeoutError, web.HTTPException, ValueError):
            return None
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def _form(self, fn: PageFn) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            form = await self._read_form(request)
            session = self.sessions.read(request.cookies.get(COOKIE))
            if form is None or not self.sessions.csrf_ok(session, form.get("csrf")):
                return await self._forbidden(request)
            assert session is not None
            user = self.sessions.who(request.headers.get("Authorization"), session)
            if user is None:
                page = self._unauthenticated(request, session, None)
                return await self._html(page, session, None, None, self._challenge())
            ask = Ask(query={}, path=dict(request.match_info), form=form, user=user)
            answer = await self._run(fn, ask)
            return await self._finish(answer, session, user, None)

        return handle

    async def _forbidden(self, request: web.Request) -> web.Response:
        session, cookie = self._session(request)
        page = message(
            403,
            "Refused",
            "This form was not sent from a console page of this session (a missing or "
            "stale CSRF token). Reload the page and try again.",
        )
        return await self._html(page, session, None, cookie)

    async def _redirect_home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{PREFIX}/")

    async def _css(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=_CSS, content_type="text/css")
        response.headers["Cache-Control"] = "max-age=3600"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        session, cookie = self._session(request)
        page = self._unauthenticated(request, session, cookie)
        nxt = safe_back(request.query.get("next"), f"{PREFIX}/")
        page = Page(page.template, {**page.context, "next": nxt}, 200)
        return await self._html(page, session, None, cookie)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await self._read_form(request)
        session = self.sessions.read(request.cookies.get(COOKIE))
        if form is None or not self.sessions.csrf_ok(session, form.get("csrf")):
            return await self._forbidden(request)
        assert session is not None
        username = form.get("username", "")
        loop = asyncio.get_running_loop()  # the secret may be a file: read off the loop
        ok = await loop.run_in_executor(
            self._work, partial(self.sessions.login, username, form.get("secret", ""))
        )
        if not ok:
            page = self._unauthenticated(request, session, None, failed=True)
            page = Page(page.template, {**page.context, "next": form.get("next", "")}, 401)
            return await self._html(page, session, None, None)
        user = username or "bearer-token"
        _, cookie = self.sessions.new(user)  # a new session id at login
        target = safe_back(form.get("next"), f"{PREFIX}/")
        return self._respond(303, b"", "text/plain", cookie, {"Location": target})

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        form = await self._read_form(request)
        session = self.sessions.read(request.cookies.get(COOKIE))
        if form is None or not self.sessions.csrf_ok(session, form.get("csrf")):
            return await self._forbidden(request)
        _, cookie = self.sessions.new()
        return self._respond(303, b"", "text/plain", cookie, {"Location": f"{PREFIX}/login"})
