"""/metrics, /healthz and /readyz over real HTTP: auth, readiness following the broker, and
the structured log lines a user's log pipeline receives."""

from __future__ import annotations

import base64
import io
import logging
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from consumers.config.service import EndpointAuth, LoggingSettings, MetricsSettings, StoreSettings
from consumers.config.settings import Settings
from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from consumers.service.app import Service
from consumers.service.endpoints import Check, OpsServer
from consumers.telemetry.logs import setup_logging
from tests.conftest import Topics, serve, wait_for
from tests.ops import http_get, run_events
from tests.servers import HttpServer


def _ops(auth: EndpointAuth | None, ready: bool = True) -> OpsServer:
    registry = CollectorRegistry()
    Counter("demo_total", "A counter.", registry=registry).inc()

    def readiness() -> Mapping[str, Check]:
        return {"kafka": Check(ready, "connected" if ready else "not connected")}

    return OpsServer(("127.0.0.1", 0), registry, readiness, auth).start()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    path.chmod(0o600)  # a secret file others can read is refused
    return path


@pytest.fixture
def bearer(token_file: Path) -> Iterator[str]:
    server = _ops(EndpointAuth(bearer_token_file=token_file))
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_without_auth_everything_answers() -> None:
    server = _ops(None, ready=False)
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, headers, body = http_get(f"{base}/metrics")
        assert status == 200 and b"demo_total 1.0" in body
        assert headers["Content-Type"].startswith("text/plain; version=")
        assert http_get(f"{base}/healthz")[:3:2] == (200, b'{"status":"ok"}\n')
        status, _, body = http_get(f"{base}/readyz")
        assert status == 503
        assert orjson.loads(body) == {  # status only: details need credentials
            "ready": False,
            "checks": {"kafka": {"ok": False}},
        }
        assert http_get(f"{base}/other")[0] == 404
    finally:
        server.stop()


def test_bearer_token_is_required_and_rotating_the_file_takes_effect(
    bearer: str, token_file: Path
) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        status, headers, _ = http_get(bearer + path)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert http_get(bearer + path, token="wrong")[0] == 401
        assert http_get(bearer + path, basic=("x", "first-token"))[0] == 401
        assert http_get(bearer + path, token="first-token")[0] == 200
    token_file.write_text("second-token")  # rewritten in place: still 0600
    assert http_get(bearer + "/metrics", token="first-token")[0] == 401
    assert http_get(bearer + "/metrics", token="second-token")[0] == 200


def test_basic_auth_and_open_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNWATCH_METRICS__AUTH__USERNAME", "prometheus")
    monkeypatch.setenv("RUNWATCH_METRICS__AUTH__PASSWORD", "pa:ss")
    monkeypatch.setenv("RUNWATCH_METRICS__AUTH__PROTECT_PROBES", "false")
    auth = Settings().metrics.auth
    assert auth is not None and auth.scheme == "basic"
    server = _ops(auth)
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, headers, _ = http_get(f"{base}/metrics")
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="runwatch"'
        assert http_get(f"{base}/metrics", basic=("prometheus", "wrong"))[0] == 401
        assert http_get(f"{base}/metrics", basic=("other", "pa:ss"))[0] == 401
        assert http_get(f"{base}/metrics", token="pa:ss")[0] == 401
        assert http_get(f"{base}/metrics", basic=("prometheus", "pa:ss"))[0] == 200
        # kubelet probes carry no credentials
        assert http_get(f"{base}/healthz")[0] == 200
        status, _, body = http_get(f"{base}/readyz")
        assert status == 200 and orjson.loads(body)["checks"] == {"kafka": {"ok": True}}
        _, _, body = http_get(f"{base}/readyz", basic=("prometheus", "pa:ss"))
        assert orjson.loads(body)["checks"] == {"kafka": {"ok": True, "detail": "connected"}}
        _, _, body = http_get(f"{base}/readyz", basic=("prometheus", "wrong"))
        assert orjson.loads(body)["checks"] == {"kafka": {"ok": True}}  # status, no detail
    finally:
        server.stop()


def test_auth_settings_must_name_one_complete_scheme(tmp_path: Path) -> None:
    for bad in (
        {},
        {"username": "u"},
        {"password": "p"},
        {"bearer_token": "t", "username": "u", "password": "p"},
    ):
        with pytest.raises(ValidationError):
            EndpointAuth.model_validate(bad)
    missing = EndpointAuth(bearer_token_file=tmp_path / "absent")
    server = _ops(missing)
    try:  # an unreadable secret refuses everyone rather than opening the endpoint
        assert http_get(f"http://127.0.0.1:{server.port}/metrics", token="")[0] == 401
    finally:
        server.stop()


def test_readiness_follows_the_broker_down_and_back(tmp_path: Path) -> None:
    """`runwatch serve` as its own process: a broker outage turns /readyz to 503 naming Kafka,
    /healthz stays 200 (no restart wanted), and /readyz is 200 again once the broker is back."""
    broker = EmbeddedBroker(free_port()).start()
    port = free_port()
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap,
                    "topic": "runs-ready",
                    "dead_letter_topic": "dead-ready",
                    "group_id": "ready",
                    "session_timeout_ms": 2000,
                    "heartbeat_interval_ms": 300,
                },
                "store": {"url": f"sqlite:///{tmp_path / 'runwatch.db'}"},
                "metrics": {
                    "listen": f"127.0.0.1:{port}",
                    "auth": {"bearer_token": "ready-token-1", "protect_probes": False},
                },
            }
        )
    )
    base = f"http://127.0.0.1:{port}"

    def checks() -> tuple[int, dict[str, dict[str, object]]]:
        try:
            status, _, body = http_get(f"{base}/readyz", token="ready-token-1")
            _, _, anonymous = http_get(f"{base}/readyz")
        except OSError:
            return 0, {}
        # without credentials: each check's status, never its detail
        assert all(set(c) == {"ok"} for c in orjson.loads(anonymous)["checks"].values())
        return status, orjson.loads(body)["checks"]

    process = None
    try:
        create_topics(broker.bootstrap, {"runs-ready": 2, "dead-ready": 1})
        process = serve(config)
        wait_for(lambda: checks()[0] == 200, timeout=60)
        _, ready = checks()
        assert ready["store"] == {"ok": True, "detail": "reachable"}
        assert ready["rules"]["ok"] and "rules loaded" in str(ready["rules"]["detail"])

        broker.stop()
        wait_for(lambda: checks()[0] == 503, timeout=30)
        _, down = checks()
        assert down["kafka"] == {"ok": False, "detail": f"not connected to {broker.bootstrap}"}
        assert down["store"]["ok"] and down["rules"]["ok"]
        assert http_get(f"{base}/healthz")[0] == 200  # alive: no restart needed

        broker.start()
        wait_for(lambda: checks()[0] == 200, timeout=30)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        broker.stop()


def test_readiness_is_false_while_the_store_is_unreachable(topics: Topics, tmp_path: Path) -> None:
    db = tmp_path / "runwatch.db"
    settings = Settings(
        kafka=topics.kafka_settings(),
        store=StoreSettings(url=f"sqlite:///{db}"),
        metrics=MetricsSettings(listen="127.0.0.1:0"),
    )
    service = Service(settings)
    try:
        assert service.readiness()["store"].ok
        service.store.dispose()
        db.rename(tmp_path / "moved.db")
        (tmp_path / "runwatch.db").mkdir()  # the path is now a directory: cannot open
        check = service.readiness()["store"]
        assert not check.ok and "unreachable" in check.detail
        assert not service.readiness()["kafka"].ok  # consumer not started
    finally:
        service.store.dispose()


def test_json_logs_carry_run_rule_and_notification_ids_and_no_secrets(
    topics: Topics, tmp_path: Path
) -> None:
    hook = HttpServer().start()
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": topics.kafka_settings().model_dump(mode="json", exclude_none=True),
                "store": {"url": f"sqlite:///{tmp_path / 'runwatch.db'}"},
                "metrics": {
                    "listen": f"127.0.0.1:{free_port()}",
                    "auth": {"bearer_token": "metrics-secret-value"},
                },
                "logging": {"format": "json", "level": "INFO"},
                "receivers": {
                    "chat": {"webhook": {"url": hook.url("/chat"), "secret_env": "HOOK_SECRET"}},
                    "ml-oncall": {"webhook": {"url": hook.url("/oncall")}},
                },
            }
        )
    )
    process = serve(config)
    try:
        topics.produce(list(run_events(seed=7)))
        wait_for(lambda: len(hook.on("/oncall")) == len(hook.on("/chat")) == 4, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        hook.stop()
    text = (tmp_path / "serve.log").read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert {line["level"] for line in lines} <= {"INFO", "WARNING", "ERROR"}
    sent = [line for line in lines if line["message"].startswith("sent webhook notification")]
    assert len(sent) == 8  # 4 failures x (ml-oncall, chat)
    for line in sent:
        assert line["rule"] == "run-failed"
        assert line["run_id"] in {f"ops-7-{i}" for i in (0, 3, 6, 9)}
        assert line["notification_id"]
    assert "metrics-secret-value" not in text


def test_log_level_comes_from_the_config() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        setup_logging(LoggingSettings(level="WARNING", format="json"))
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        log = logging.getLogger("consumers.test")
        log.info("quiet")
        log.warning("loud", extra={"run_id": "r1", "rule": "run-failed"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["level"], x["message"], x["run_id"], x["rule"]) for x in lines] == [
        ("WARNING", "loud", "r1", "run-failed")
    ]


def test_basic_header_parsing_rejects_garbage() -> None:
    server = _ops(EndpointAuth.model_validate({"username": "u", "password": "p"}))
    base = f"http://127.0.0.1:{server.port}/metrics"
    try:
        for header in ("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Basic"):
            request = urllib.request.Request(base, headers={"Authorization": header})
            try:
                urllib.request.urlopen(request, timeout=5)
                raise AssertionError("accepted " + header)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
    finally:
        server.stop()
