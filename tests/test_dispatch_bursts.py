"""A burst of notifications against the real aiosmtpd server and aiohttp endpoint: the
connections are held open and reused across the burst, a connection the server closed is
replaced on the next send without losing or doubling a mail, and each mail and post goes
out exactly once."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from consumers.config.receivers import WebhookReceiver
from consumers.config.settings import Settings
from consumers.dispatch.context import RunUrl, alert_context
from consumers.model.errors import SendError
from consumers.notify import webhook
from consumers.notify.templating import RECHECK_S, Renderer
from consumers.store import Store
from consumers.store.outbox import Outbox
from tests.conftest import wait_for
from tests.servers import HttpServer, SmtpServer
from tests.test_dispatcher import Running, alert, event, write
from tests.test_template_context import row

BURST = 300


def burst_settings(smtp_port: int, http: HttpServer | None = None, **notify: object) -> Settings:
    receivers: dict[str, object] = {"mail": {"email": {"to": ["oncall@example.com"]}}}
    if http is not None:
        receivers["ok"] = {"webhook": {"url": http.url("/ok")}}
    return Settings.model_validate(
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "connections": 4},
            "receivers": receivers,
            "notify": {"concurrency": 8, **notify},
        }
    )


def write_burst(store: Store, receiver: str, count: int, prefix: str = "b") -> None:
    alerts = [alert(event(f"{prefix}-{i}", seconds=i / 1000), receiver) for i in range(count)]
    for start in range(0, count, 100):
        write(store, *alerts[start : start + 100])


def ids_of(smtp: SmtpServer) -> Counter[str]:
    return Counter(str(m.message["X-Runwatch-Notification-Id"]) for m in smtp.mails)


def all_sent(store: Store, count: int) -> bool:
    return Outbox(store).depth()["sent"] == count


def test_a_burst_of_mails_goes_over_the_pooled_connections_once_each(
    store: Store, smtp: SmtpServer
) -> None:
    write_burst(store, "mail", BURST)
    with Running(store, burst_settings(smtp.port)):
        wait_for(lambda: all_sent(store, BURST), timeout=60)
    sent = ids_of(smtp)
    assert len(sent) == BURST and set(sent.values()) == {1}
    # smtp.connections is 4: a connection per mail (or per claimed batch) would show more
    assert smtp.connections <= 4, smtp.connections
    assert {n.attempts for n in Outbox(store).list(limit=BURST)} == {1}


def test_a_burst_of_webhooks_reuses_its_connections(store: Store, http: HttpServer) -> None:
    smtp_port = 1  # no mail in this burst
    write_burst(store, "ok", BURST)
    with Running(store, burst_settings(smtp_port, http)):
        wait_for(lambda: all_sent(store, BURST), timeout=60)
    keys = Counter(hit.headers["Idempotency-Key"] for hit in http.on("/ok"))
    assert len(keys) == BURST and set(keys.values()) == {1}
    # at most one connection per worker (notify.concurrency 8), held across the burst
    assert http.connections("/ok") <= 8, http.connections("/ok")


def test_a_connection_the_server_closed_is_replaced_on_the_next_send(store: Store) -> None:
    """The server drops idle connections after 0.3 s (as real ones do after minutes): the
    second burst finds every pooled connection closed, reconnects, and neither loses a mail
    nor sends one twice nor records a failure."""
    server = SmtpServer(idle_timeout_s=0.3).start()
    try:
        with Running(store, burst_settings(server.port)) as running:
            write_burst(store, "mail", 40, prefix="first")
            running.dispatcher.wake()
            wait_for(lambda: all_sent(store, 40), timeout=30)
            first = server.connections
            time.sleep(1.0)  # every connection idle past the server's timeout: closed
            write_burst(store, "mail", 40, prefix="second")
            running.dispatcher.wake()
            wait_for(lambda: all_sent(store, 80), timeout=30)
        sent = ids_of(server)
        assert len(sent) == 80 and set(sent.values()) == {1}
        assert server.connections > first  # the closed ones were replaced, not reused
        rows = Outbox(store).list(limit=100)
        assert {(n.state, n.attempts, n.reason) for n in rows} == {("sent", 1, None)}
        assert running.metrics.notification_failures._metrics == {}
    finally:
        server.stop()


def calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[tuple[Any, ...]]:
    """`owner.name` still does its work, and each call's arguments (after an instance's
    self) are recorded in the list returned."""
    real = getattr(owner, name)
    seen: list[tuple[Any, ...]] = []
    method = isinstance(owner, type)

    def recorded(*args: Any) -> Any:
        seen.append(args[1:] if method else args)
        return real(*args)

    monkeypatch.setattr(owner, name, recorded)
    return seen


def test_templates_are_looked_up_once_a_second_and_an_edit_is_live_within_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst renders the same templates thousands of times: their files are checked at
    most every RECHECK_S, not at each render, and an edited file is still picked up."""
    folder = tmp_path / "templates" / "webhook"
    folder.mkdir(parents=True)
    (folder / "native.json.j2").write_text('{"v": 1}')
    renderer = Renderer(tmp_path / "templates")
    stats = calls(monkeypatch, os.path, "getmtime")
    assert [renderer.render_webhook("native", {}) for _ in range(200)] == [b'{"v":1}'] * 200
    assert len(stats) <= 1  # at most one look at the file, not 200
    (folder / "native.json.j2").write_text('{"v": 2}')
    os.utime(folder / "native.json.j2", (time.time() + 5, time.time() + 5))
    time.sleep(RECHECK_S + 0.1)
    assert renderer.render_webhook("native", {}) == b'{"v":2}'


def test_a_claim_that_waited_past_its_lease_is_left_to_its_new_claimant(
    store: Store, http: HttpServer
) -> None:
    """One worker, a 1 s lease and a first post that takes 2.5 s: the three rows claimed
    with it wait in the queue past their lease. Meanwhile another replica (played here by
    the test) takes the expired rows back and claims them. The first dispatcher must not post
    them after that: the other replica is sending them."""
    http.responses = {"/ok": lambda n: (200, {}, 2.5 if n == 0 else 0.0)}
    write_burst(store, "ok", 4)
    settings = burst_settings(1, http, concurrency=1, lease_s=1)
    outbox = Outbox(store)
    with Running(store, settings):
        wait_for(lambda: len(http.on("/ok")) == 1, timeout=30)
        time.sleep(1.5)  # every claim is now past its lease
        outbox.release_expired(datetime.now(UTC))
        taken = {n.id for n in outbox.claim(datetime.now(UTC), 10, 60)}
        taken_at = time.monotonic()
        time.sleep(3.0)  # the slow post ends; the queued rows would go next
    assert len(taken) == 4, taken  # all four had expired, the one being sent too
    late = [hit for hit in http.on("/ok") if hit.at > taken_at]
    assert late == [], [hit.headers["Idempotency-Key"] for hit in late]


def test_a_render_copies_no_chained_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jinja2 gives each template a ChainMap of globals, which every render copied key by
    key (each lookup raising KeyError in the template's own empty map): half of a webhook
    body's render. Each template's globals are one dict now, and the globals still work."""
    lookups = calls(monkeypatch, collections.ChainMap, "__getitem__")
    renderer = Renderer()
    context = alert_context(row(), None, RunUrl(None))
    for _ in range(50):
        body = orjson.loads(renderer.render_webhook("native", context))
        alerts = orjson.loads(renderer.render_webhook("alertmanager", context))  # its globals
    assert lookups == []
    assert body["notificationId"] == "n-1" and alerts["groupLabels"] == {"alertname": "run-failed"}


def test_a_successful_post_names_no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint's redacted name (a hash of the URL) is made for a failure's text only:
    made for every post it was a visible share of a webhook burst's loop."""
    names = calls(monkeypatch, webhook.redact, "url")
    server = HttpServer(responses={"/no": lambda n: (500, {}, 0.0)}).start()

    async def posts() -> None:
        async with aiohttp.ClientSession() as session:
            sender = webhook.WebhookSender(session)
            for i in range(20):
                ok = WebhookReceiver(url=server.url("/ok"))
                await sender.send(ok, b"{}", notification_id=str(i))
            assert names == []
            with pytest.raises(SendError, match="answered 500"):
                no = WebhookReceiver(url=server.url("/no"))
                await sender.send(no, b"{}", notification_id="x")

    try:
        asyncio.run(posts())
    finally:
        server.stop()
    assert names == [(server.url("/no"),)]
    assert len(server.on("/ok")) == 20
