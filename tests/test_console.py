"""The web console over HTTP against a live `runwatch serve`: what a failure shows, every
producer-supplied value escaped, the ops listener's auth in front, CSRF on every form.
The browser's view (clicks, a silence stopping a mail, a retry sending one) is in
tests/test_console_browser.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consumers.config.settings import Settings, load_settings
from consumers.demo.broker import EmbeddedBroker
from consumers.model.errors import ConfigError
from tests.conftest import wait_for
from tests.console_kit import PASSWORD, USER, LiveConsole, fresh_topics, live_console, run_events

HOSTILE_RUN = 'run-"><img src=x onerror=alert(1)>'
HOSTILE_EXPERIMENT = "<script>alert('exp')</script>"
HOSTILE_TAG = "<b onmouseover=alert(3)>tag</b>"
HOSTILE_MESSAGE = "</pre><script>alert(2)</script>\nTraceback ends"


@pytest.fixture(scope="module")
def live(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    topics = fresh_topics(broker.bootstrap)
    with live_console(topics, tmp_path_factory.mktemp("console")) as running:
        yield running


def test_a_failure_shows_with_its_cause_its_timeline_and_its_mail(live: LiveConsole) -> None:
    live.publish(*run_events("run-oom-1", tags={"team": "vision"}))
    page = live.wait_text("/console/", "run-oom-1")
    cause = page.index("cuda_oom")
    assert cause < page.index("run-oom-1")  # listed under its cause
    assert "bert-large" in page and "torch.OutOfMemoryError at train.py:88" in page
    assert "silence this experiment" in page

    wait_for(lambda: len(live.smtp.server.mails) >= 1, timeout=60)
    run = live.wait_text("/console/runs/run-oom-1", "sent at")
    assert 'id="cause">cuda_oom<' in run
    assert "<svg" in run and "<rect" in run  # the timeline, drawn on the server
    assert re.search(r"Running \d+ (s|min)", run)  # time in state, in the chart's legend
    assert "<dt>team</dt><dd>vision</dd>" in run
    assert "ml-oncall" in run and "state-sent" in run


def test_every_value_from_an_event_is_escaped(live: LiveConsole) -> None:
    live.publish(
        *run_events(
            HOSTILE_RUN,
            experiment=HOSTILE_EXPERIMENT,
            message=HOSTILE_MESSAGE,
            tags={HOSTILE_TAG: HOSTILE_TAG},
        )
    )
    failures = live.wait_text("/console/", "onerror=alert(1)&gt;")
    from urllib.parse import quote

    run = live.wait_text(f"/console/runs/{quote(HOSTILE_RUN, safe='')}", "Traceback ends")
    notifications = live.wait_text("/console/notifications", "onerror")
    for body in (failures, run, notifications):
        assert "<script>alert" not in body
        assert "<img src=x" not in body
        assert "<b onmouseover" not in body
    assert "&lt;script&gt;alert(&#39;exp&#39;)&lt;/script&gt;" in failures
    assert "&lt;/pre&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in run
    assert "&lt;b onmouseover=alert(3)&gt;tag&lt;/b&gt;" in run
    # the link to the run is one path segment, whatever the id holds
    assert 'href="/console/runs/run-%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in failures


def test_the_console_is_behind_the_ops_listeners_auth(live: LiveConsole) -> None:
    status, body = live.get("/console/", auth=False)
    assert status == 401 and "Sign in" in body and "run-oom" not in body
    status, _ = live.get("/console/notifications", auth=False)
    assert status == 401
    status, body = live.get("/console/", auth=True)
    assert status == 200

    async def login(password: str) -> tuple[int, int]:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            csrf = await _token(http, live, "/console/login", auth=False)
            async with http.post(
                f"{live.url}login",
                data={"csrf": csrf, "username": USER, "secret": password, "next": "/console/"},
                allow_redirects=False,
            ) as answer:
                posted = answer.status
            async with http.get(live.url, allow_redirects=False) as page:
                return posted, page.status

    assert asyncio.run(login("wrong")) == (401, 401)
    assert asyncio.run(login(PASSWORD)) == (303, 200)  # the form's session, no header after


def test_every_form_post_needs_this_sessions_csrf_token(live: LiveConsole) -> None:
    form = {"matchers": "experiment=csrf-test", "duration": "1h", "comment": HOSTILE_TAG}
    headers = {"Authorization": live.basic}

    async def attempts() -> list[int]:
        statuses = []
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar, headers=headers) as http:
            token = await _token(http, live, "/console/silences")
            other = await _other_session_token(live)
            for data in (form, {**form, "csrf": "0" * 64}, {**form, "csrf": other}):
                async with http.post(
                    f"{live.url}silences", data=data, allow_redirects=False
                ) as answer:
                    statuses.append(answer.status)
            # a cross-site post carries no SameSite=Strict cookie: the token alone is refused
            async with (
                aiohttp.ClientSession(headers=headers) as bare,
                bare.post(
                    f"{live.url}silences", data={**form, "csrf": token}, allow_redirects=False
                ) as answer,
            ):
                statuses.append(answer.status)
            async with http.post(
                f"{live.url}silences", data={**form, "csrf": token}, allow_redirects=False
            ) as answer:
                statuses.append(answer.status)
                location = answer.headers["Location"]
            async with http.get(f"http://127.0.0.1:{live.port}{location}") as page:
                assert "experiment=csrf-test" in await page.text()
        return statuses

    assert asyncio.run(attempts()) == [403, 403, 403, 403, 303]

    async def too_large() -> int:
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(
                f"{live.url}silences", data={"matchers": "x" * 100_000}, allow_redirects=False
            ) as answer,
        ):
            return answer.status

    assert asyncio.run(too_large()) == 413
    _, body = live.get("/console/silences")
    assert body.count("experiment=csrf-test") == 1  # only the one with a valid token
    assert "<b onmouseover" not in body and "&lt;b onmouseover=alert(3)&gt;" in body


def test_the_session_cookie_is_httponly_and_samesite_strict(live: LiveConsole) -> None:
    async def cookie() -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.get(live.url, headers={"Authorization": live.basic}) as page,
        ):
            assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert page.headers["X-Frame-Options"] == "DENY"
            return page.headers["Set-Cookie"]

    header = asyncio.run(cookie())
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/console" in header


def test_the_console_is_off_by_default_and_refused_open_without_auth(tmp_path: Path) -> None:
    assert Settings().console.enabled is False
    config = tmp_path / "c.yaml"
    config.write_text("metrics: {listen: '0.0.0.0:9464'}\nconsole: {enabled: true}\n")
    with pytest.raises(ConfigError, match=r"needs metrics\.auth"):
        load_settings(config)
    config.write_text("metrics: {listen: '127.0.0.1:9464'}\nconsole: {enabled: true}\n")
    assert load_settings(config).console.enabled


async def _token(
    http: aiohttp.ClientSession, live: LiveConsole, path: str, *, auth: bool = True
) -> str:
    headers: dict[str, Any] = {} if auth else {"Authorization": ""}
    async with http.get(f"http://127.0.0.1:{live.port}{path}", headers=headers) as page:
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.text())
    assert found is not None
    return found.group(1)


async def _other_session_token(live: LiveConsole) -> str:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(
        cookie_jar=jar, headers={"Authorization": live.basic}
    ) as other:
        return await _token(other, live, "/console/silences")
