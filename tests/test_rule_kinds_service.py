"""The scheduled kinds inside `serve`: events through the real broker, evaluation behind the
store lease, notifications out through real SMTP and HTTP receivers."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from consumers.config.settings import Settings, shipped
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from consumers.store import open_store
from consumers.store.outbox import Notification, Outbox
from consumers.store.silences import add_silence
from tests.conftest import RunningService, Topics, wait_for
from tests.servers import HttpServer, SmtpServer

RULES = """
rules:
  - name: pipeline-failed
    when: {status: [Failed]}
    tree: {mode: rollup, wait: 1m, every: 1s}
    notify: [oncall, am]
  - name: many-failures
    when: {status: [Failed]}
    threshold: {value: 3, window: 15m, every: 1s, group_by: [WorkspaceName]}
    notify: [am]
"""


def _pipeline(root: str) -> list[RunStatusEvent]:
    t0 = datetime.now(UTC) - timedelta(minutes=3)

    def ev(seconds: float, run: str, status: str, **more: object) -> RunStatusEvent:
        return RunStatusEvent.model_validate(
            {
                "TimeGenerated": t0 + timedelta(seconds=seconds),
                "RunId": run,
                "Status": status,
                "ExperimentName": "nightly",
                "WorkspaceName": "ml-prod",
            }
            | more
        )

    out = [ev(0, root, "Running")]
    for i, status in enumerate(["Completed", "Failed", "Failed", "Failed"]):
        child = {"ParentRunId": root, "RootRunId": root, "Tags": {"step": f"s{i}"}}
        message = {"Message": f"s{i} broke"} if status == "Failed" else {}
        out += [ev(1 + i, f"{root}-{i}", "Running", **child)]
        out += [ev(10 + i, f"{root}-{i}", status, **child, **message)]
    return [*out, ev(30, root, "Failed")]


def test_serve_rolls_up_a_pipeline_and_counts_failures(
    topics: Topics, store_url: str, tmp_path: Path, http: HttpServer, smtp: SmtpServer
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text(RULES)
    settings = Settings.model_validate(
        {
            "kafka": topics.kafka_settings().model_dump(),
            "store": {"url": store_url},
            "metrics": {"listen": "127.0.0.1:0"},
            "rules_dir": str(rules_dir),
            "templates_dir": str(shipped("templates")),
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "from": "rw <rw@example.com>"},
            "receivers": {
                "oncall": {"email": {"to": ["oncall@example.com"]}},
                "am": {"webhook": {"url": http.url("/am"), "format": "alertmanager"}},
            },
            "evaluation": {"tick_s": 0.2},
        }
    )
    topics.produce([encode(e, EventFormat.NATIVE) for e in _pipeline("pipe-7")])
    with RunningService(settings) as running:
        wait_for(lambda: len(http.on("/am")) >= 2 and smtp.mails, timeout=60)
        bodies = [orjson.loads(hit.body) for hit in http.on("/am")]
        by_rule = {b["commonLabels"]["alertname"]: b for b in bodies}
        rollup = by_rule["pipeline-failed"]
        assert rollup["status"] == "firing"
        summary = "3 of 4 steps failed in pipe-7: s1, s2, s3"
        assert rollup["commonAnnotations"]["summary"] == summary
        threshold = by_rule["many-failures"]
        assert threshold["commonAnnotations"]["summary"] == (
            "many-failures: 4 events in 15m in WorkspaceName=ml-prod (>= 3)"
        )
        [mail] = smtp.mails
        assert mail.message["Subject"] == f"[runwatch] FIRING: {summary} (Sev3)"
        text = mail.message.get_body(("plain",)).get_content()
        assert "Details (3)" in text and "s2 broke" in text
        assert running.metric("runwatch_alerts_total", rule="pipeline-failed", severity="3") == 1
    assert len(http.on("/am")) == 2  # once each, however many ticks ran


def test_serve_applies_silences_to_scheduled_alerts(
    topics: Topics, store_url: str, tmp_path: Path, http: HttpServer
) -> None:
    """`serve` gives its scheduler the noise policy: a silence holds a threshold alert back
    (issue 13: scheduled alerts skipped noise control)."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text(RULES)
    settings = Settings.model_validate(
        {
            "kafka": topics.kafka_settings().model_dump(),
            "store": {"url": store_url},
            "metrics": {"listen": "127.0.0.1:0"},
            "rules_dir": str(rules_dir),
            "templates_dir": str(shipped("templates")),
            "receivers": {
                "oncall": {"webhook": {"url": http.url("/oncall")}},
                "am": {"webhook": {"url": http.url("/am"), "format": "alertmanager"}},
            },
            "evaluation": {"tick_s": 0.2},
        }
    )
    store = open_store(store_url, migrate=True)
    try:
        silence = add_silence(
            store, ["alertname=many-failures"], duration_s=3600, comment="", now=datetime.now(UTC)
        )
    finally:
        store.dispose()
    topics.produce([encode(e, EventFormat.NATIVE) for e in _pipeline("pipe-8")])
    with RunningService(settings) as running:
        outbox = Outbox(running.service.store)

        def held() -> list[Notification]:
            return outbox.list(state="silenced")

        wait_for(lambda: held() and len(http.on("/am")) >= 1, timeout=60)
        [row] = held()
        assert (row.rule, row.receiver, row.reason) == (
            "many-failures",
            "am",
            f"silence:{silence.id}",
        )
        assert running.metric("runwatch_notifications_suppressed_total", reason="silenced") == 1
        time.sleep(1.5)  # more ticks: still nothing of it sent
    bodies = [orjson.loads(hit.body) for hit in http.on("/am")]
    assert [b["commonLabels"]["alertname"] for b in bodies] == ["pipeline-failed"]
