"""The outbox and the dispatcher against a real HTTP endpoint and SMTP server: retries,
Retry-After, permanent failures, timeouts, the template sandbox, throttling, replays."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from consumers.config.settings import Settings, shipped
from consumers.dispatch.dispatcher import Dispatcher
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.outbox.recorder import recording
from consumers.store import Store
from consumers.store.outbox import Outbox
from consumers.telemetry.metrics import Metrics
from tests.conftest import wait_for
from tests.servers import HttpServer, SmtpServer

T0 = datetime.now(UTC) - timedelta(minutes=1)


def event(run_id: str, status: str = "Failed", seconds: float = 0, **extra: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "TimeGenerated": T0 + timedelta(seconds=seconds),
            "RunId": run_id,
            "Status": status,
            "ExperimentName": "exp",
            **extra,
        }
    )


def alert(ev: RunStatusEvent, *receivers: str, throttle_s: float = 0.0) -> Alert:
    return Alert(
        rule="run-failed",
        severity=2,
        receivers=receivers,
        throttle_key=f"RunId={ev.RunId}|Status={ev.Status}",
        throttle_s=throttle_s,
        event=ev,
    )


def settings_with(http: HttpServer, smtp_port: int, templates: Path | None = None) -> Settings:
    hooks = ("flaky", "limited", "bad", "slow", "ok")
    return Settings.model_validate(
        {
            "templates_dir": str(templates or shipped("templates")),
            "smtp": {"host": "127.0.0.1", "port": smtp_port},
            "receivers": {
                "mail": {"email": {"to": ["oncall@example.com"]}},
                **{
                    name: {"webhook": {"url": http.url(f"/{name}"), "timeout_s": 0.5}}
                    for name in hooks
                },
            },
            "notify": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5, "max_age_s": 60},
        }
    )


KINDS = {
    "mail": "email",
    "flaky": "webhook",
    "limited": "webhook",
    "bad": "webhook",
    "slow": "webhook",
    "ok": "webhook",
}


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
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def states(store: Store) -> dict[str, tuple[str, str | None, int]]:
    return {n.receiver: (n.state, n.reason, n.attempts) for n in Outbox(store).list(limit=500)}


def write(store: Store, *alerts: Alert) -> int:
    events = list({id(a.event): a.event for a in alerts}.values())
    return store.write_batch(events, record=recording(alerts, KINDS)).notifications


def test_transient_failures_retry_permanent_ones_go_dead(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    http.responses = {
        "/flaky": lambda n: (500, {}, 0.0) if n == 0 else (200, {}, 0.0),
        "/limited": lambda n: (429, {"Retry-After": "2"}, 0.0) if n == 0 else (200, {}, 0.0),
        "/bad": lambda n: (400, {}, 0.0),
        "/slow": lambda n: (200, {}, 2.0) if n == 0 else (200, {}, 0.0),
    }
    assert write(store, alert(event("r1"), "flaky", "limited", "bad", "slow", "ok", "mail")) == 6
    with Running(store, settings_with(http, smtp.port)) as running:
        wait_for(lambda: sum(s == "sent" for s, _, _ in states(store).values()) == 5, timeout=20)
    result = states(store)
    assert result["bad"] == ("dead", "http_400", 1)
    assert len(http.on("/bad")) == 1
    assert result["flaky"][0] == "sent" and len(http.on("/flaky")) == 2
    assert result["slow"][0] == "sent" and len(http.on("/slow")) == 2
    limited = http.on("/limited")
    assert result["limited"][0] == "sent" and len(limited) == 2
    assert limited[1].at - limited[0].at >= 2.0  # Retry-After honoured
    assert result["ok"] == ("sent", None, 1) and result["mail"][0] == "sent"
    assert len(smtp.mails) == 1
    failures = running.metrics.notification_failures
    assert failures.labels(receiver_type="webhook", reason="http_500")._value.get() == 1
    assert failures.labels(receiver_type="webhook", reason="timeout")._value.get() == 1


def test_a_replayed_event_creates_no_second_notification(store: Store) -> None:
    ev = event("replayed")
    assert write(store, alert(ev, "ok")) == 1
    assert write(store, alert(event("replayed"), "ok")) == 0  # same event, as Kafka redelivers
    assert len(Outbox(store).list()) == 1


def test_throttling_records_but_does_not_send(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    first = alert(event("throttled", seconds=0), "ok", throttle_s=3600)
    again = alert(event("throttled", seconds=30), "ok", throttle_s=3600)  # same key, new event
    write(store, first)
    write(store, again)
    rows = sorted(Outbox(store).list(), key=lambda n: n.event_time)
    assert [r.state for r in rows] == ["pending", "throttled"]
    with Running(store, settings_with(http, smtp.port)):
        wait_for(lambda: len(http.on("/ok")) == 1)
    assert len(http.on("/ok")) == 1


def test_followups_of_an_alert_thread_under_the_first_mail(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    write(store, alert(event("thread", seconds=0), "mail"))
    write(store, alert(event("thread", seconds=5), "mail"))  # same fingerprint, no throttle
    with Running(store, settings_with(http, smtp.port)):
        wait_for(lambda: len(smtp.mails) == 2)
    first, second = sorted(smtp.mails, key=lambda m: "In-Reply-To" in m.message)
    assert first.message["In-Reply-To"] is None
    assert second.message["In-Reply-To"] == first.message["Message-ID"]
    assert first.message["Message-ID"] in str(second.message["References"])


def test_a_template_reaching_for_dunders_dead_letters_the_notification(
    store: Store, http: HttpServer, smtp: SmtpServer, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(shipped("templates"), templates)
    (templates / "email" / "body.html.j2").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    )
    write(store, alert(event("sandboxed"), "mail"))
    with Running(store, settings_with(http, smtp.port, templates)):
        wait_for(lambda: states(store)["mail"][0] == "dead")
    _, reason, _ = states(store)["mail"]
    assert reason == "template"
    assert "__class__" in (Outbox(store).list()[0].last_error or "")
    assert smtp.mails == []


def test_too_old_notifications_go_dead_and_can_be_retried(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    http.responses = {"/flaky": lambda n: (503, {}, 0.0)}
    write(store, alert(event("aged"), "flaky"))
    settings = settings_with(http, smtp.port).model_copy(
        update={
            "notify": settings_with(http, smtp.port).notify.model_copy(update={"max_age_s": 0.5})
        }
    )
    with Running(store, settings):
        wait_for(lambda: states(store)["flaky"][0] == "dead", timeout=20)
        assert states(store)["flaky"][1] == "expired"
        (row,) = Outbox(store).list()
        http.responses = {"/flaky": lambda n: (200, {}, 0.0)}  # the endpoint is fixed
        assert Outbox(store).retry(row.id, datetime.now(UTC))
        wait_for(lambda: states(store)["flaky"][0] == "sent", timeout=20)
