"""Receivers that misbehave, against the real dispatcher and outbox: whatever a webhook
endpoint answers (or a template or a store read raises), the notification ends in a
recorded attempt -- retried with backoff, or dead with a reason -- never stuck in `sending`
to be sent again at every lease; no body is read beyond a few KiB."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text, update

from consumers.config.settings import Settings, shipped
from consumers.dispatch.dispatcher import Dispatcher
from consumers.model.alerts import Alert
from consumers.model.errors import SendError, StoreError
from consumers.model.events import RunStatusEvent
from consumers.notify.webhook import retry_after
from consumers.outbox.recorder import recording
from consumers.store import Store
from consumers.store.outbox import Notification, Outbox
from consumers.store.schema import notifications
from consumers.telemetry.metrics import Metrics
from tests.conftest import wait_for
from tests.hostile import (
    MB,
    HugeBody,
    RawServer,
    huge_header,
    many_headers,
    never_answers,
    redirect,
)
from tests.servers import HttpServer

T0 = datetime.now(UTC) - timedelta(minutes=1)


def alert(run_id: str, *receivers: str) -> Alert:
    event = RunStatusEvent.model_validate(
        {"TimeGenerated": T0, "RunId": run_id, "Status": "Failed", "ExperimentName": "exp"}
    )
    return Alert(
        rule="run-failed",
        severity=2,
        receivers=receivers,
        throttle_key=f"RunId={run_id}",
        throttle_s=0.0,
        event=event,
    )


def settings(
    hooks: dict[str, str],
    *,
    templates: Path | None = None,
    formats: dict[str, str] | None = None,
    **notify: Any,
) -> Settings:
    formats = formats or {}
    return Settings.model_validate(
        {
            "templates_dir": str(templates or shipped("templates")),
            "smtp": {"host": "127.0.0.1", "port": 9},
            "receivers": {
                name: {
                    "webhook": {"url": url, "timeout_s": 1.0, "format": formats.get(name, "native")}
                }
                for name, url in hooks.items()
            },
            "notify": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5, **notify},
        }
    )


class Running:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.dispatcher = Dispatcher(store, settings, self.metrics)
        self.stop = threading.Event()

    def __enter__(self) -> Running:
        self.thread = self.dispatcher.start(self.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def write(store: Store, hooks: dict[str, str], *alerts: Alert) -> None:
    events = list({id(a.event): a.event for a in alerts}.values())
    kinds = dict.fromkeys(hooks, "webhook")
    store.write_batch(events, record=recording(alerts, kinds))


def rows(store: Store) -> dict[str, Notification]:
    return {n.receiver: n for n in Outbox(store).list(limit=500)}


def failed_with(store: Store, receiver: str, reason: str) -> bool:
    row = rows(store)[receiver]
    return row.reason == reason and row.state in ("pending", "dead")


# -- Retry-After ----------------------------------------------------------------------------


def test_a_retry_after_beyond_any_date_is_capped_not_stuck(store: Store, http: HttpServer) -> None:
    """It raised OverflowError: the row stayed `sending` and was sent again every lease."""
    http.responses = {"/far": lambda n: (503, {"Retry-After": "99999999999999"}, 0.0)}
    hooks = {"far": http.url("/far")}
    write(store, hooks, alert("far", "far"))
    with Running(store, settings(hooks)):
        wait_for(lambda: failed_with(store, "far", "http_503"), timeout=15)
    row = rows(store)["far"]
    assert row.state == "pending"
    wait = (row.next_attempt_at - datetime.now(UTC)).total_seconds()
    assert 3600 - 30 < wait <= 3600  # notify.retry_after_max_s, 1 h by default
    assert len(http.on("/far")) == 1


FULLWIDTH_120 = "\uff11\uff12\uff10"
GARBAGE = ("²", FULLWIDTH_120, "-5", "1.5", "0x10", "12 34", "Mon, 99 Foo 2020 00:00:00 GMT")


def test_a_garbage_retry_after_falls_back_to_our_backoff(store: Store, http: HttpServer) -> None:
    """`²` raised ValueError (stuck in `sending`); fullwidth digits were taken as a number."""
    hooks = {}
    for i, value in enumerate(GARBAGE):
        http.responses[f"/g{i}"] = lambda n, v=value: (  # type: ignore[misc]
            (429, {"Retry-After": v}, 0.0) if n == 0 else (200, {}, 0.0)
        )
        hooks[f"g{i}"] = http.url(f"/g{i}")
    write(store, hooks, alert("garbage", *hooks))
    with Running(store, settings(hooks)):
        wait_for(lambda: all(r.state == "sent" for r in rows(store).values()), timeout=20)
    for i in range(len(GARBAGE)):
        first, second = http.on(f"/g{i}")
        assert second.at - first.at < 5, GARBAGE[i]  # backoff: at most 0.5 s, plus polling


def test_an_http_date_retry_after_is_honoured(store: Store, http: HttpServer) -> None:
    http.responses = {
        "/dated": lambda n: (
            (503, {"Retry-After": formatdate(time.time() + 3, usegmt=True)}, 0.0)
            if n == 0
            else (200, {}, 0.0)
        )
    }
    hooks = {"dated": http.url("/dated")}
    write(store, hooks, alert("dated", "dated"))
    with Running(store, settings(hooks)):
        wait_for(lambda: rows(store)["dated"].state == "sent", timeout=20)
    first, second = http.on("/dated")
    assert second.at - first.at >= 1.5  # whole seconds: 3 s ahead is more than 2 s away


def test_the_retry_after_cap_is_configurable(store: Store, http: HttpServer) -> None:
    http.responses = {
        "/capped": lambda n: (429, {"Retry-After": "3600"}, 0.0) if n == 0 else (200, {}, 0.0)
    }
    hooks = {"capped": http.url("/capped")}
    write(store, hooks, alert("capped", "capped"))
    with Running(store, settings(hooks, retry_after_max_s=1)):
        wait_for(lambda: rows(store)["capped"].state == "sent", timeout=20)
    first, second = http.on("/capped")
    assert 0.9 <= second.at - first.at < 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("²", None),
        (FULLWIDTH_120, None),
        ("-5", None),
        ("1.5", None),
        ("+5", None),
        ("Mon, 99 Foo 2020 00:00:00 GMT", None),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # in the past: now
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    assert retry_after(value) == expected


def test_retry_after_reads_the_three_http_date_forms_and_huge_numbers() -> None:
    now = datetime(1994, 11, 6, 8, 49, 7, tzinfo=UTC).timestamp()
    for value in (
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime, no zone: GMT
    ):
        assert retry_after(value, now=now) == 30.0, value
    assert retry_after("99999999999999") == 99999999999999.0  # the dispatcher caps it
    assert retry_after("9" * 5000) == float("inf")  # no int() of 5,000 digits


# -- bodies and headers ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 200])
def test_a_huge_body_is_not_read(store: Store, http: HttpServer, status: int) -> None:
    """A 50 MB error body was read whole before being cut to 300 characters."""
    huge = HugeBody(status)
    http.handlers["/huge"] = huge
    hooks = {"huge": http.url("/huge")}
    write(store, hooks, alert("huge", "huge"))
    with Running(store, settings(hooks)):
        if status == 200:
            wait_for(lambda: rows(store)["huge"].state == "sent", timeout=15)
        else:
            wait_for(lambda: failed_with(store, "huge", "http_500"), timeout=15)
        assert huge.done.wait(15)
    assert huge.sent < huge.size // 4, f"the client took {huge.sent / MB:.1f} MB"
    if status == 500:
        error = rows(store)["huge"].last_error or ""
        assert "answered 500: xxxx" in error and len(error) < 500


@pytest.mark.parametrize("handler", [huge_header(), many_headers(), huge_header(status=500)])
def test_huge_or_too_many_headers_are_a_bad_response(
    store: Store, http: HttpServer, handler: Any
) -> None:
    http.handlers["/headers"] = handler
    hooks = {"headers": http.url("/headers")}
    write(store, hooks, alert("headers", "headers"))
    with Running(store, settings(hooks)) as running:
        wait_for(lambda: failed_with(store, "headers", "bad_response"), timeout=15)
    failures = running.metrics.notification_failures
    assert failures.labels(receiver_type="webhook", reason="bad_response")._value.get() >= 1


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"HTTP/1.1 2oo OK\r\nContent-Length: 0\r\n\r\n", "bad_response"),
        (b"\x00\xff\xfe garbage\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nX-Bad\x00: \x01\r\nContent-Length: 0\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 1000\r\n\r\npartial", "connection"),
        (b"HTTP/1.1 200 OK\r\nContent-", "connection"),
        (b"", "connection"),
    ],
    ids=["status-line", "binary", "header-bytes", "cut-body", "cut-headers", "closed"],
)
def test_garbage_or_a_cut_off_response_is_classified(
    store: Store, reply: bytes, reason: str
) -> None:
    raw = RawServer(reply).start()
    try:
        hooks = {"raw": raw.url("/raw")}
        write(store, hooks, alert("raw", "raw"))
        with Running(store, settings(hooks)):
            wait_for(lambda: failed_with(store, "raw", reason), timeout=15)
    finally:
        raw.stop()
    assert rows(store)["raw"].state == "pending"  # retried, with backoff


@pytest.mark.parametrize("where", ["handler", "silent-socket", "dripping-body"])
def test_a_receiver_that_never_answers_times_out(
    store: Store, http: HttpServer, where: str
) -> None:
    raw: RawServer | None = None
    if where == "handler":
        http.handlers["/mute"] = never_answers(http)
        url = http.url("/mute")
    else:
        dripping = b"HTTP/1.1 500 X\r\nContent-Length: 9999\r\n\r\nx"
        reply = b"" if where == "silent-socket" else dripping
        raw = RawServer(reply, hang=True).start()
        url = raw.url("/mute")
    hooks = {"mute": url}
    try:
        write(store, hooks, alert("mute", "mute"))
        started = time.monotonic()
        with Running(store, settings(hooks)):
            wait_for(lambda: failed_with(store, "mute", "timeout"), timeout=15)
            assert time.monotonic() - started < 10  # timeout_s is 1
    finally:
        if raw is not None:
            raw.stop()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(store: Store, http: HttpServer, status: int) -> None:
    http.handlers["/moved"] = redirect(status, http.url("/elsewhere/token-abcdef123456"))
    hooks = {"moved": http.url("/moved")}
    write(store, hooks, alert("moved", "moved"))
    with Running(store, settings(hooks)):
        wait_for(lambda: rows(store)["moved"].state == "dead", timeout=15)
    row = rows(store)["moved"]
    assert row.reason == f"http_{status}"
    assert "redirects are not followed" in (row.last_error or "")
    assert "token-abcdef123456" not in (row.last_error or "")  # a Location is a URL: masked
    assert http.on("/elsewhere/token-abcdef123456") == []


# -- templates, store reads, attempts --------------------------------------------------------


def test_a_template_raising_anything_goes_dead_with_reason_template(
    store: Store, http: HttpServer, tmp_path: Path
) -> None:
    """range(10**9) raises OverflowError in the sandbox, 1 // 0 ZeroDivisionError: neither is
    a jinja2 TemplateError, and the notification stayed `sending`."""
    templates = tmp_path / "templates"
    shutil.copytree(shipped("templates"), templates)
    (templates / "webhook" / "native.json.j2").write_text(
        "{% for i in range(10**9) %}{% endfor %}{}"
    )
    (templates / "webhook" / "slack.json.j2").write_text('{"n": {{ 1 // 0 }}}')
    hooks = {"ranged": http.url("/ranged"), "divided": http.url("/divided")}
    write(store, hooks, alert("templated", *hooks))
    config = settings(hooks, templates=templates, formats={"divided": "slack"})
    with Running(store, config):
        wait_for(lambda: all(r.state == "dead" for r in rows(store).values()), timeout=15)
    result = rows(store)
    assert result["ranged"].reason == "template"
    assert "OverflowError" in (result["ranged"].last_error or "")
    assert result["divided"].reason == "template"
    assert "ZeroDivisionError" in (result["divided"].last_error or "")
    assert http.hits == []


def test_a_failing_store_read_is_retried_then_dead(store: Store, http: HttpServer) -> None:
    """The run's detail cannot be read (here: its table is gone): a recorded retry each time,
    then dead when too old; it stayed `sending` (and stopped the dispatcher) before."""
    hooks = {"ok": http.url("/ok")}
    write(store, hooks, alert("unreadable", "ok"))
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE runs RENAME TO runs_gone"))
    with Running(store, settings(hooks, max_age_s=2)) as running:
        wait_for(lambda: rows(store)["ok"].state == "dead", timeout=20)
    row = rows(store)["ok"]
    assert row.reason == "expired"
    assert "runs" in (row.last_error or "") and row.attempts >= 2
    failures = running.metrics.notification_failures
    assert failures.labels(receiver_type="webhook", reason="store")._value.get() >= 2
    assert http.hits == []


def test_attempts_run_out(store: Store, http: HttpServer) -> None:
    http.responses = {"/down": lambda n: (503, {}, 0.0)}
    hooks = {"down": http.url("/down")}
    write(store, hooks, alert("down", "down"))
    with Running(store, settings(hooks, max_attempts=3)):
        wait_for(lambda: rows(store)["down"].state == "dead", timeout=20)
        row = rows(store)["down"]
        assert row.reason == "attempts" and "http_503" in (row.last_error or "")
        assert len(http.on("/down")) == 3
        http.responses = {"/down": lambda n: (200, {}, 0.0)}  # fixed: a manual retry sends it
        assert Outbox(store).retry(row.id, datetime.now(UTC))
        wait_for(lambda: rows(store)["down"].state == "sent", timeout=20)
    assert rows(store)["down"].attempts == 1


def test_a_notification_sent_again_by_the_lease_too_often_or_too_long_goes_dead(
    store: Store, http: HttpServer
) -> None:
    """A claim whose attempt recorded nothing (the process died mid-send, every time) comes
    back with the lease; attempts and age still end it, unsent."""
    hooks = {"looped": http.url("/looped"), "old": http.url("/old")}
    write(store, hooks, alert("looped", "looped"), alert("old", "old"))
    long_ago = datetime.now(UTC) - timedelta(days=2)
    with store.engine.begin() as conn:
        n = notifications
        conn.execute(update(n).where(n.c.receiver == "looped").values(attempts=5))
        conn.execute(update(n).where(n.c.receiver == "old").values(attempts=1, created_at=long_ago))
    with Running(store, settings(hooks, max_attempts=5)):
        wait_for(lambda: all(r.state == "dead" for r in rows(store).values()), timeout=15)
    result = rows(store)
    assert result["looped"].reason == "attempts"
    assert result["old"].reason == "expired"
    assert http.hits == []


def test_failures_are_classified() -> None:
    from consumers.notify.failures import as_send_error
    from consumers.notify.webhook import BODY_CAP

    assert as_send_error(SendError("http_503", "x", retriable=True)).reason == "http_503"
    store = as_send_error(StoreError("database is locked"))
    assert (store.reason, store.retriable) == ("store", True)
    bug = as_send_error(KeyError("oops" * 1000))
    assert bug.reason == "internal" and bug.retriable
    assert bug.detail.startswith("KeyError: ") and len(bug.detail) <= 1000
    assert BODY_CAP <= 8192


def test_the_claim_loop_outlives_a_failing_store(store: Store, http: HttpServer) -> None:
    """Claiming fails (here: the outbox table is gone for a while): the dispatcher keeps
    trying with backoff and sends once the store answers again; its thread died before, and
    the service went on consuming without sending anything."""
    hooks = {"ok": http.url("/ok")}
    write(store, hooks, alert("after-the-outage", "ok"))
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE notifications RENAME TO notifications_gone"))
    with Running(store, settings(hooks)) as running:
        errors = running.metrics.store_errors
        wait_for(lambda: errors._value.get() >= 2, timeout=20)
        assert running.thread.is_alive()
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE notifications_gone RENAME TO notifications"))
        wait_for(lambda: rows(store)["ok"].state == "sent", timeout=30)
    assert len(http.hits) == 1
