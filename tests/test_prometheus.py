"""The deploy/ Prometheus files against a real Prometheus (Debian's package): promtool accepts
them, and every PromQL expression of the Grafana dashboard and of the self-alerting rules
returns data from a Prometheus that scrapes a runwatch which has processed events."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from consumers.demo.broker import free_port
from tests.conftest import Topics, serve, wait_for
from tests.ops import (
    DEPLOY,
    NO_PROMETHEUS,
    PROMETHEUS,
    PROMTOOL,
    Prometheus,
    dashboard_queries,
    http_get,
    operands,
    prometheus_config,
    run_events,
)
from tests.servers import HttpServer, SmtpServer

pytestmark = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason=NO_PROMETHEUS)

PROM_DIR = DEPLOY / "prometheus"


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_accepts_the_scrape_config_and_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert "SUCCESS: 8 rules found" in promtool(
        "check", "rules", str(PROM_DIR / "runwatch-alerts.yml")
    )


def test_each_self_alert_fires_on_its_situation() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(PROM_DIR / "runwatch-alerts.test.yml"))


def test_alert_operands_are_what_each_rule_measures() -> None:
    assert operands(
        "sum(runwatch_consumer_lag_messages) > 1000\nand sum(delta(x{a=~'b|c'}[10m])) > 0"
    ) == ["sum(runwatch_consumer_lag_messages)", "sum(delta(x{a=~'b|c'}[10m]))"]
    assert operands('up{job="runwatch"} == 0') == ['up{job="runwatch"}']
    assert operands('max(x{state="pending"}) > 100') == ['max(x{state="pending"})']


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROM_DIR / "runwatch-alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def has_data(answer: dict[str, Any]) -> bool:
    if answer.get("status") != "success":
        return False
    result = answer["data"]["result"]
    if answer["data"]["resultType"] == "scalar":
        result = [{"value": result}]
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def test_dashboard_and_alert_queries_return_data_from_a_live_runwatch(
    topics: Topics, tmp_path: Path
) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text("s3cr3t-scrape-token\n")
    token_file.chmod(0o600)  # runwatch refuses a secret file others can read
    smtp = SmtpServer().start()
    # The chat endpoint refuses the first delivery (a retry), then accepts.
    hook = HttpServer(responses={"/chat": lambda n: (503, {}, 0.0) if n == 0 else (200, {}, 0.0)})
    hook.start()
    metrics_port = free_port()
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": topics.bootstrap,
                    "topic": topics.topic,
                    "dead_letter_topic": topics.dead_letter_topic,
                    "group_id": topics.group_id,
                    "session_timeout_ms": 2000,
                    "heartbeat_interval_ms": 300,
                },
                "store": {"url": f"sqlite:///{tmp_path / 'runwatch.db'}"},
                "metrics": {
                    "listen": f"127.0.0.1:{metrics_port}",
                    "auth": {"bearer_token_file": str(token_file)},
                },
                "logging": {"format": "json"},
                "smtp": {"host": "127.0.0.1", "port": smtp.port},
                "receivers": {
                    "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
                    "chat": {"webhook": {"url": hook.url("/chat")}},
                },
                "notify": {"backoff_initial_s": 0.2},
            }
        )
    )
    process = serve(config)
    prometheus: Prometheus | None = None
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_for(lambda: _ready(base, "s3cr3t-scrape-token"), timeout=60)
        prom_config = prometheus_config(
            tmp_path / "prometheus.yml", f"127.0.0.1:{metrics_port}", token_file
        )
        prometheus = Prometheus(prom_config, tmp_path)
        running = prometheus
        # The first scrape sees the series at zero, so rates below see the increase.
        wait_for(lambda: has_data(running.query('up{job="runwatch"} == 1')), timeout=30)

        topics.produce([*run_events(), b"this is not json", b'{"shape": "unknown"}'])
        wait_for(lambda: len(smtp.mails) >= 4 and len(hook.on("/chat")) >= 5, timeout=60)

        queries = [(f"dashboard: {title}", expr) for title, expr in dashboard_queries(_board())]
        for name, expr in alert_expressions():
            queries += [(f"alert {name}", operand) for operand in operands(expr)]
        for _, expr in queries:
            assert "$" not in expr, expr
        assert len(queries) >= 25

        missing: list[str] = []

        def all_answer() -> bool:
            missing[:] = [
                f"{where}: {expr}" for where, expr in queries if not has_data(running.query(expr))
            ]
            return not missing

        try:
            wait_for(all_answer, timeout=45, interval=1.0)
        except AssertionError:
            pytest.fail("queries without data:\n" + "\n".join(missing))

        # The whole alert expressions: only the two dead letters are a problem right now.
        for name, expr in alert_expressions():
            answer = running.query(expr)
            assert answer["status"] == "success", (name, answer)
            reasons = {sample["metric"].get("reason") for sample in answer["data"]["result"]}
            expected = {"not_json", "unknown_shape"} if name == "RunwatchDeadLetters" else set()
            assert reasons == expected, (name, answer)
        # ... and Prometheus itself, evaluating the rules file, fires that alert.
        wait_for(lambda: _firing(running) == {"RunwatchDeadLetters"}, timeout=20)
        # The data are the events: 4 of 12 runs failed, in one experiment.
        failed = running.query('sum(runwatch_run_failures_total{experiment="exp-a"})')
        assert float(failed["data"]["result"][0]["value"][1]) == 4
        dead = running.query("sum(runwatch_dead_letters_total)")
        assert float(dead["data"]["result"][0]["value"][1]) == 2
    finally:
        if prometheus is not None:
            prometheus.stop()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        hook.stop()
        smtp.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "s3cr3t-scrape-token" not in log


def _firing(prometheus: Prometheus) -> set[str]:
    status, _, body = http_get(f"{prometheus.url}/api/v1/alerts")
    assert status == 200
    alerts = orjson.loads(body)["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def _board() -> dict[str, Any]:
    board: dict[str, Any] = orjson.loads(
        (DEPLOY / "grafana" / "dashboards" / "runwatch.json").read_bytes()
    )
    return board


def _ready(base: str, token: str) -> bool:
    try:
        return http_get(f"{base}/readyz", token=token)[0] == 200
    except OSError:
        time.sleep(0.1)
        return False
