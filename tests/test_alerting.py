"""Kafka -> rules -> outbox -> email and webhooks, against a real broker, a real SMTP server
and a real HTTP endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from consumers.config.settings import Settings, shipped
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from consumers.notify.webhook import verify
from consumers.store import open_store
from consumers.store.outbox import Outbox
from tests.conftest import RUNWATCH, RunningService, Topics, wait_for
from tests.servers import HttpServer, SmtpServer

FORMATS = ("native", "alertmanager", "azure-common", "slack", "teams")
SECRET = "s3cret-for-tests"
RULES = """
rules:
  - name: run-failed
    when:
      status: [Failed]
    severity: 1
    annotations:
      summary: "A run failed"
    notify: [ml-oncall, hook-native, hook-alertmanager, hook-azure-common, hook-slack, hook-teams]
"""


@pytest.fixture(autouse=True)
def _hook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(RULES)
    return folder


def alert_settings(
    topics: Topics, store_url: str, rules_dir: Path, smtp_port: int, http: HttpServer
) -> Settings:
    return Settings.model_validate(
        {
            "kafka": topics.kafka_settings().model_dump(),
            "store": {"url": store_url},
            "metrics": {"listen": "127.0.0.1:0"},
            "rules_dir": str(rules_dir),
            "templates_dir": str(shipped("templates")),
            "run_url_template": "https://ml.example.com/runs/{RunId}",
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "runwatch <rw@example.com>"},
            "receivers": {
                "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
                **{
                    f"hook-{fmt}": {
                        "webhook": {
                            "url": http.url(f"/{fmt}"),
                            "format": fmt,
                            "secret_env": "TEST_HOOK_SECRET",
                            "headers": {"X-Team": "ml"},
                        }
                    }
                    for fmt in FORMATS
                },
            },
            "notify": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        }
    )


def failing_run(run_id: str, **extra: Any) -> list[RunStatusEvent]:
    t0 = datetime.now(UTC) - timedelta(minutes=5)

    def at(minutes: float, status: str, **more: Any) -> RunStatusEvent:
        return RunStatusEvent.model_validate(
            {
                "TimeGenerated": t0 + timedelta(minutes=minutes),
                "RunId": run_id,
                "Status": status,
                "ExperimentName": "bert-finetune",
                "WorkspaceName": "ml-prod",
                **extra,
                **more,
            }
        )

    child = RunStatusEvent.model_validate(
        {
            "TimeGenerated": t0 + timedelta(minutes=2),
            "RunId": f"{run_id}-step1",
            "ParentRunId": run_id,
            "RootRunId": run_id,
            "Status": "Completed",
            "ExperimentName": "bert-finetune",
        }
    )
    return [
        at(0, "Queued"),
        at(1, "Running"),
        child,
        at(4, "Failed", Message="CUDA out of memory. Tried to allocate 2.00 GiB", Level="Error"),
    ]


def test_a_failed_run_sends_the_email_and_every_webhook_format(
    topics: Topics, store_url: str, rules_dir: Path, smtp: SmtpServer, http: HttpServer
) -> None:
    topics.produce([encode(e, EventFormat.NATIVE) for e in failing_run("run-42")])
    settings = alert_settings(topics, store_url, rules_dir, smtp.port, http)
    with RunningService(settings) as running:
        wait_for(lambda: len(smtp.mails) == 1 and all(http.on(f"/{f}") for f in FORMATS))
        wait_for(
            lambda: (
                running.metric(
                    "runwatch_notifications_total", receiver_type="webhook", result="sent"
                )
                == 5
            )
        )
        assert running.metric("runwatch_alerts_total", rule="run-failed", severity="1") == 1
    mail = smtp.mails[0]
    assert mail.envelope_to == ["oncall@example.com"]
    subject = str(mail.message["Subject"])
    assert "Failed" in subject and "run-42" in subject
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for needle in (
        "run-42",
        "bert-finetune",
        "ml-prod",
        "CUDA out of memory",
        "https://ml.example.com/runs/run-42",
        "Queued",
        "Running",
    ):
        assert needle in text, needle
        assert needle in html, needle
    assert "Completed" in text  # the child summary
    assert mail.message["Message-ID"]

    for fmt in FORMATS:
        (hit,) = http.on(f"/{fmt}")
        assert verify(SECRET, hit.headers["X-Runwatch-Signature"], hit.body)
        assert not verify(SECRET, hit.headers["X-Runwatch-Signature"], hit.body + b" ")
        assert hit.headers["Idempotency-Key"]
        assert hit.headers["X-Team"] == "ml"
    native = orjson.loads(http.on("/native")[0].body)
    assert native["version"] == "1" and native["event"]["RunId"] == "run-42"
    am = orjson.loads(http.on("/alertmanager")[0].body)
    assert am["version"] == "4" and am["status"] == "firing"
    assert am["alerts"][0]["labels"]["alertname"] == "run-failed"
    azure = orjson.loads(http.on("/azure-common")[0].body)
    assert azure["schemaId"] == "azureMonitorCommonAlertSchema"
    assert azure["data"]["essentials"]["severity"] == "Sev1"
    slack = orjson.loads(http.on("/slack")[0].body)
    assert slack["blocks"] and "run-42" in slack["text"]
    teams = orjson.loads(http.on("/teams")[0].body)
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard"


def test_injection_through_run_names_and_tags_gets_nowhere(
    topics: Topics, store_url: str, rules_dir: Path, smtp: SmtpServer, http: HttpServer
) -> None:
    evil = "evil\r\nBcc: victim@example.com\r\nX-Evil: 1"
    events = failing_run(
        evil,
        Tags={"note": "<script>alert(1)</script>", "tmpl": "{{ ''.__class__ }}"},
        ExperimentName="résumé-训练",
    )
    topics.produce([encode(e, EventFormat.NATIVE) for e in events])
    with RunningService(alert_settings(topics, store_url, rules_dir, smtp.port, http)):
        wait_for(lambda: len(smtp.mails) == 1 and all(http.on(f"/{f}") for f in FORMATS))
    mail = smtp.mails[0]
    assert mail.envelope_to == ["oncall@example.com"]
    assert mail.message["Bcc"] is None and mail.message["X-Evil"] is None
    headers = mail.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in headers and b"\nX-Evil:" not in headers
    assert all(part["Bcc"] is None and part["X-Evil"] is None for part in mail.message.walk())
    assert "\n" not in str(mail.message["Subject"])
    html = mail.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "{{ ''.__class__ }}" in text  # shown as text, never evaluated
    assert "résumé-训练" in text
    for fmt in FORMATS:  # every body is still valid JSON
        orjson.loads(http.on(f"/{fmt}")[0].body)
    native = orjson.loads(http.on("/native")[0].body)  # and carries the data unchanged
    assert native["event"]["Tags"]["note"] == "<script>alert(1)</script>"
    assert native["event"]["RunId"] == evil


def _write_config(path: Path, settings: Settings) -> Path:
    path.write_text(
        yaml.safe_dump(settings.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    return path


def test_sigkill_between_store_commit_and_offset_commit_sends_one_email(
    topics: Topics,
    store_url: str,
    rules_dir: Path,
    smtp: SmtpServer,
    http: HttpServer,
    tmp_path: Path,
) -> None:
    config = _write_config(
        tmp_path / "runwatch.yaml", alert_settings(topics, store_url, rules_dir, smtp.port, http)
    )
    topics.produce([encode(e, EventFormat.NATIVE) for e in failing_run("crash-run")])
    env = {**os.environ, "RUNWATCH_CHAOS_KILL_AFTER_STORE_COMMIT": "1"}
    log = (tmp_path / "serve.log").open("ab")
    crashed = subprocess.Popen(
        [RUNWATCH, "serve", "-c", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    assert crashed.wait(timeout=60) == -signal.SIGKILL
    store = open_store(store_url)
    try:
        assert [n.state for n in Outbox(store).list()].count("pending") >= 1  # stored, unsent
    finally:
        store.dispose()
    env.pop("RUNWATCH_CHAOS_KILL_AFTER_STORE_COMMIT")
    again = subprocess.Popen(
        [RUNWATCH, "serve", "-c", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    try:
        wait_for(lambda: len(smtp.mails) >= 1, timeout=60)
        time.sleep(3)  # the redelivered batch has been consumed by now; nothing more comes
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
    assert len(smtp.mails) == 1
    assert all(len(http.on(f"/{fmt}")) == 1 for fmt in FORMATS)


def test_smtp_down_through_many_retries_then_up_delivers_everything_once(
    topics: Topics, store_url: str, rules_dir: Path, http: HttpServer
) -> None:
    """The SMTP server is away until every mail has failed 8 times (the backoff has reached
    its 1 s ceiling and stayed there; the wait used to be a fixed 30 s, which showed nothing
    more): once it listens, each mail arrives once."""
    smtp = SmtpServer()  # its port is chosen, nothing listens yet
    runs = [f"down-{i}" for i in range(10)]
    topics.produce([encode(e, EventFormat.NATIVE) for r in runs for e in failing_run(r)])
    settings = alert_settings(topics, store_url, rules_dir, smtp.port, http)
    with RunningService(settings) as running:
        wait_for(
            lambda: (
                running.metric(
                    "runwatch_notification_failures_total",
                    receiver_type="email",
                    reason="connection",
                )
                >= 10 * 8
            ),
            timeout=60,
        )
        smtp.start()
        try:
            wait_for(lambda: len(smtp.mails) == 10, timeout=30)
            time.sleep(2)
        finally:
            smtp.stop()
    subjects = sorted(str(m.message["Subject"]) for m in smtp.mails)
    assert len(smtp.mails) == 10
    assert len({m.message["Message-ID"] for m in smtp.mails}) == 10
    for run in runs:
        assert sum(run in s for s in subjects) == 1
