"""The new receivers delivering for real: PagerDuty events to an HTTP endpoint answering as
PagerDuty does (202, 429, 400), and the alertmanager-push receiver against a real
Alertmanager (Debian's prometheus-alertmanager 0.25) whose API and `amtool` show the alert,
then no longer show it once runwatch pushes the resolution."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from consumers.config.settings import Settings
from consumers.dispatch.dispatcher import Dispatcher
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.outbox.recorder import recording
from consumers.store import Store
from consumers.store.outbox import Outbox
from consumers.telemetry.metrics import Metrics
from tests.conftest import wait_for
from tests.servers import HttpServer

ROUTING_KEY = "R0UT1NGKEY-for-tests-0123456789ab"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)


def event(run_id: str, **extra: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "TimeGenerated": T0,
            "RunId": run_id,
            "Status": "Failed",
            "ExperimentName": "bert-finetune",
            "WorkspaceName": "ml-prod",
            "Message": "CUDA out of memory",
            **extra,
        }
    )


def per_event(ev: RunStatusEvent, *receivers: str) -> Alert:
    return Alert(
        rule="run-failed",
        severity=1,
        annotations={"summary": "A run failed"},
        receivers=receivers,
        throttle_key=f"RunId={ev.RunId}|Status={ev.Status}",
        event=ev,
    )


def threshold(ev: RunStatusEvent, *receivers: str, status: str = "firing") -> Alert:
    return Alert(
        rule="many-failures",
        severity=0,
        receivers=receivers,
        throttle_key="ExperimentName=bert-finetune",
        event=ev,
        kind="threshold",
        status=status,  # type: ignore[arg-type]
        instance="episode-1",
        summary="many-failures: 5 events in 10m in ExperimentName=bert-finetune (>= 5)",
        group={"ExperimentName": "bert-finetune"},
        value=5.0,
    )


class Running:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.dispatcher = Dispatcher(store, settings, Metrics(CollectorRegistry()))
        self.stop = threading.Event()

    def __enter__(self) -> Running:
        self.thread = self.dispatcher.start(self.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def settings(receivers: dict[str, Any]) -> Settings:
    return Settings.model_validate(
        {
            "run_url_template": "https://ml.example.com/runs/{RunId}",
            "receivers": receivers,
            "notify": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5, "max_age_s": 60},
        }
    )


def write(store: Store, kinds: dict[str, str], *alerts: Alert) -> None:
    events = list({id(a.event): a.event for a in alerts}.values())
    store.write_batch(events, record=recording(alerts, kinds))


def states(store: Store) -> dict[tuple[str, str], tuple[str, str | None, int]]:
    return {
        (n.receiver, n.run_id): (n.state, n.reason, n.attempts)
        for n in Outbox(store).list(limit=500)
    }


# --- PagerDuty ---------------------------------------------------------------------------------


def test_pagerduty_accepted_rate_limited_and_refused(
    store: Store,
    http: HttpServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)
    http.responses = {
        "/ok": lambda n: (202, {}, 0.0),
        "/limited": lambda n: (429, {}, 0.0) if n == 0 else (202, {}, 0.0),
        "/bad": lambda n: (400, {}, 0.0),
    }
    receivers = {
        name: {
            "webhook": {
                "url": http.url(f"/{name}"),
                "format": "pagerduty",
                "routing_key_env": "PD_ROUTING_KEY",
            },
            "send_resolved": True,
        }
        for name in ("ok", "limited", "bad")
    }
    names = ("ok", "limited", "bad")
    kinds = dict.fromkeys(names, "webhook")
    write(store, kinds, per_event(event("r1"), *names), threshold(event("r2"), "ok"))
    caplog.set_level(logging.DEBUG)
    with Running(store, settings(receivers)):
        wait_for(lambda: sum(s[0] in ("sent", "dead") for s in states(store).values()) == 4)
        write(store, kinds, threshold(event("r2"), "ok", status="resolved"))
        wait_for(lambda: len(http.on("/ok")) == 3)
    result = states(store)
    assert result[("ok", "r1")][0] == "sent"
    assert result[("limited", "r1")][::2] == ("sent", 2)  # 429 is retried
    assert result[("bad", "r1")][:2] == ("dead", "http_400")  # a bad event is not
    assert len(http.on("/bad")) == 1
    bodies = [orjson.loads(hit.body) for hit in http.on("/ok")]
    assert all(body["routing_key"] == ROUTING_KEY for body in bodies)
    trigger = next(b for b in bodies if b["payload"]["custom_details"]["run_id"] == "r2")
    resolve = bodies[-1]
    assert resolve == {
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
        "routing_key": ROUTING_KEY,
    }
    assert ROUTING_KEY not in caplog.text
    assert all(ROUTING_KEY not in (n.last_error or "") for n in Outbox(store).list(limit=50))


def test_pagerduty_without_its_routing_key_is_dead_not_sent(
    store: Store, http: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PD_MISSING_KEY", raising=False)
    receivers = {
        "pd": {
            "webhook": {
                "url": http.url("/pd"),
                "format": "pagerduty",
                "routing_key_env": "PD_MISSING_KEY",
            }
        }
    }
    write(store, {"pd": "webhook"}, per_event(event("r1"), "pd"))
    with Running(store, settings(receivers)):
        wait_for(lambda: states(store)[("pd", "r1")][0] == "dead")
    assert states(store)[("pd", "r1")][1] == "routing_key"
    assert http.on("/pd") == []


@pytest.mark.parametrize(
    ("receiver", "message"),
    [
        (
            {"webhook": {"url": "https://events.pagerduty.com/v2/enqueue", "format": "pagerduty"}},
            "needs routing_key_env or routing_key_file",
        ),
        (
            {"webhook": {"url": "http://hook", "routing_key_env": "K"}},
            "for format pagerduty only",
        ),
        (
            {"webhook": {"url": "http://hook"}, "alertmanager": {"url": "http://am:9093"}},
            "exactly one of email, webhook or alertmanager",
        ),
        (
            {"alertmanager": {"url": "http://am", "bearer_token_env": "T", "username": "u"}},
            "either a bearer token or username/password",
        ),
        ({"alertmanager": {"url": "http://am", "username": "u"}}, "needs both username"),
        ({"alertmanager": {"url": "am:9093"}}, "http:// or https://"),
    ],
)
def test_receiver_settings_refuse_what_cannot_work(receiver: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings({"r": receiver})


# --- alertmanager-push: credentials, against an HTTP endpoint ----------------------------------


def test_alertmanager_push_posts_the_api_body_with_its_credentials(
    store: Store, http: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AM_TOKEN", "t0ken")
    monkeypatch.setenv("AM_PASSWORD", "pw")
    receivers = {
        "bearer": {"alertmanager": {"url": http.url("/b/"), "bearer_token_env": "AM_TOKEN"}},
        "basic": {
            "alertmanager": {
                "url": http.url("/a"),
                "username": "runwatch",
                "password_env": "AM_PASSWORD",
            }
        },
    }
    write(store, dict.fromkeys(receivers, "alertmanager"), per_event(event("r1"), *receivers))
    with Running(store, settings(receivers)):
        wait_for(lambda: http.on("/b/api/v2/alerts") and http.on("/a/api/v2/alerts"))
    (bearer,) = http.on("/b/api/v2/alerts")
    (basic,) = http.on("/a/api/v2/alerts")
    assert bearer.headers["Authorization"] == "Bearer t0ken"
    assert basic.headers["Authorization"] == "Basic cnVud2F0Y2g6cHc="  # runwatch:pw
    (alert,) = orjson.loads(bearer.body)
    assert alert["labels"] == {
        "alertname": "run-failed",
        "experiment": "bert-finetune",
        "run_id": "r1",
        "severity": "error",
        "status": "Failed",
        "workspace": "ml-prod",
    }
    assert alert["generatorURL"] == "https://ml.example.com/runs/r1"
    assert "endsAt" not in alert  # a per-event alert: Alertmanager's resolve_timeout ends it


# --- alertmanager-push against a real Alertmanager ---------------------------------------------

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")
CONFIG = """\
route:
  receiver: blackhole
  group_wait: 0s
receivers:
  - name: blackhole
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """Our own Alertmanager: own config, storage and port, cluster listener off."""
    if ALERTMANAGER is None:
        pytest.skip(
            "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)"
        )
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG)
    port = _free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(f"{base}/-/ready"), timeout=30)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def active(base: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = _get(f"{base}/api/v2/alerts?active=true&silenced=true")
    return [a for a in alerts if a["status"]["state"] == "active"]


def amtool_query(base: str, *matchers: str) -> str:
    assert AMTOOL is not None
    result = subprocess.run(
        [AMTOOL, "alert", "query", f"--alertmanager.url={base}", "-o", "json", *matchers],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_a_real_alertmanager_shows_the_pushed_alerts_and_drops_the_resolved_one(
    store: Store, alertmanager: str
) -> None:
    receivers = {"am": {"alertmanager": {"url": alertmanager}, "send_resolved": True}}
    kinds = {"am": "alertmanager"}
    write(store, kinds, per_event(event("r1"), "am"), threshold(event("r2"), "am"))
    with Running(store, settings(receivers)):
        wait_for(lambda: len(active(alertmanager)) == 2, timeout=30)
        shown = {a["labels"]["alertname"]: a for a in active(alertmanager)}
        failed, many = shown["run-failed"], shown["many-failures"]
        assert failed["labels"]["run_id"] == "r1" and failed["labels"]["severity"] == "error"
        assert failed["annotations"]["summary"] == "A run failed"
        assert failed["generatorURL"] == "https://ml.example.com/runs/r1"
        assert datetime.fromisoformat(failed["startsAt"]) == T0
        assert many["labels"] == {
            "alertname": "many-failures",
            "experiment": "bert-finetune",
            "severity": "critical",
        }
        # held while runwatch will send the resolution (send_resolved), not resolve_timeout
        assert datetime.fromisoformat(many["endsAt"]) > datetime.now(UTC) + timedelta(days=6)
        if AMTOOL is not None:
            queried = json.loads(amtool_query(alertmanager, "alertname=many-failures"))
            assert [a["labels"]["experiment"] for a in queried] == ["bert-finetune"]
        write(store, kinds, threshold(event("r2"), "am", status="resolved"))
        wait_for(lambda: [a["labels"]["alertname"] for a in active(alertmanager)] == ["run-failed"])
    if AMTOOL is not None:
        assert json.loads(amtool_query(alertmanager, "alertname=many-failures")) == []
        assert "run-failed" in amtool_query(alertmanager)
    assert {s[0] for s in states(store).values()} == {"sent"}
