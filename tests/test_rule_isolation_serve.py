"""Issue 12 case 3 against a real `runwatch serve` process: a rule whose `where:` raises on one
event (`floor(to_number(properties.loss))` with loss "1e999" overflows) is a counted rule
error. The event is stored, every other rule (per-event and scheduled) still notifies, and
serve keeps running."""

from __future__ import annotations

import re
import signal
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import yaml

from consumers.config.settings import shipped
from consumers.demo.broker import free_port
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from tests.conftest import Topics, serve, wait_for
from tests.ops import http_get
from tests.servers import HttpServer, SmtpServer

POISONED = "floor(to_number(properties.loss)) > `5`"
RULES = f"""
rules:
  - name: big-loss
    when: {{where: "{POISONED}"}}
    notify: [am]
  - name: run-failed
    when: {{status: [Failed]}}
    notify: [oncall]
  - name: loss-spikes
    when: {{where: "{POISONED}"}}
    threshold: {{value: 1, window: 15m, every: 1s}}
    notify: [am]
  - name: many-failures
    when: {{status: [Failed]}}
    threshold: {{value: 2, window: 15m, every: 1s}}
    notify: [am]
  - name: stuck
    when: {{experiment: train}}
    absence: {{limits: {{Running: 1h}}, every: 1s}}
    notify: [am]
"""


def _event(run: str, status: str, seconds: float, **properties: str) -> bytes:
    event = RunStatusEvent.model_validate(
        {
            "TimeGenerated": datetime.now(UTC) - timedelta(minutes=2) + timedelta(seconds=seconds),
            "RunId": run,
            "Status": status,
            "ExperimentName": "train",
            "WorkspaceName": "ws",
            "Properties": properties,
        }
    )
    return encode(event, EventFormat.NATIVE)


def _stored(db: Path) -> set[str]:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return {row[0] for row in conn.execute('select "RunId" from events')}
    except sqlite3.OperationalError:  # not created yet
        return set()


def _metric(port: int, name: str, **labels: str) -> float:
    status, _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.decode().splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_a_rule_that_raises_is_counted_and_stops_nothing(
    topics: Topics, tmp_path: Path, http: HttpServer, smtp: SmtpServer
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text(RULES)
    db = tmp_path / "runwatch.db"
    port = free_port()
    config = tmp_path / "runwatch.yaml"
    kafka = topics.kafka_settings().model_dump(mode="json", exclude_none=True)
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": kafka,
                "store": {"url": f"sqlite:///{db}"},
                "metrics": {"listen": f"127.0.0.1:{port}"},
                "rules_dir": str(rules_dir),
                "templates_dir": str(shipped("templates")),
                "smtp": {"host": "127.0.0.1", "port": smtp.port, "from": "rw <rw@example.com>"},
                "receivers": {
                    "oncall": {"email": {"to": ["oncall@example.com"]}},
                    "am": {"webhook": {"url": http.url("/am"), "format": "alertmanager"}},
                },
                "evaluation": {"tick_s": 0.2, "max_tracked_runs": 1},
            }
        )
    )
    topics.produce(
        [
            _event("poison", "Failed", 0, loss="1e999"),
            _event("big", "Failed", 1, loss="7"),
            _event("quiet", "Running", 2, loss="2"),
            _event("quiet2", "Running", 2.5, loss="1"),
        ]
    )
    process = serve(config)
    log = tmp_path / "serve.log"
    try:
        wait_for(
            lambda: (
                _stored(db) >= {"poison", "big", "quiet", "quiet2"} or process.poll() is not None
            ),
            timeout=60,
        )
        assert process.poll() is None, log.read_text()

        def alertnames() -> list[str]:
            bodies = [orjson.loads(hit.body) for hit in http.on("/am")]
            return sorted(b["commonLabels"]["alertname"] for b in bodies)

        wait_for(
            lambda: (
                alertnames() == ["big-loss", "loss-spikes", "many-failures"]
                and len(smtp.mails) == 2
            ),
            timeout=60,
        )
        assert sorted(m.message["Subject"] for m in smtp.mails)[0].startswith("[runwatch]")
        wait_for(lambda: _metric(port, "runwatch_rule_errors_total", rule="loss-spikes") >= 1)
        # Two Running runs, a cap of one: the tracker keeps one and counts the other evicted.
        wait_for(lambda: _metric(port, "runwatch_rule_tracked_runs_evicted_total", what="run") >= 1)
        assert _metric(port, "runwatch_rule_tracked_runs") == 1
        assert _metric(port, "runwatch_rule_errors_total", rule="big-loss") == 1
        assert _metric(port, "runwatch_rule_errors_total", rule="run-failed") == 0
        # Still consuming: a later event is stored, and the process has not restarted.
        topics.produce([_event("later", "Completed", 3, loss="1")])
        wait_for(lambda: "later" in _stored(db), timeout=60)
        assert process.poll() is None, log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert text.count("OverflowError") <= 4, text  # logged once per rule, not per event
