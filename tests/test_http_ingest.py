"""Issue 15 item 2: Event Grid push over HTTP, against a real `runwatch serve` process, the
real broker and a real aiohttp client.

Bodies (tests/samples/README.md records the sources): eventgrid/subscription-validation-event.json
and its -response.json are VERBATIM from MicrosoftDocs/azure-docs
articles/event-grid/webhook-event-delivery.md @53f11ed0; eventgrid/runstatuschanged.*.json
VERBATIM from event-schema-machine-learning.md @df9ae8bd; the OPTIONS handshake's header
names and values from cloudevents/spec http-webhook.md section 4 (eventgrid/
cloudevents-webhook-handshake.json). Other bodies are the documented event with its run id
and time changed, as marked.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from consumers.demo.broker import EmbeddedBroker, create_topics, free_port
from tests.conftest import Topics, serve, wait_for, write_config

SAMPLES = Path(__file__).resolve().parent / "samples" / "eventgrid"
SECRET = "pushed-secret-" + uuid.uuid4().hex
OLD_SECRET = "rotated-out-" + uuid.uuid4().hex  # a second line of the secret file
MAX_BODY = 64 * 1024
SLOW_S = 2.0  # header_timeout_s and body_timeout_s of the service under test
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
Answer = tuple[int, dict[str, str], bytes]


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    """One request with the real aiohttp client: (status, headers, body)."""

    async def go() -> Answer:
        timeout = aiohttp.ClientTimeout(total=60)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url, data=body, headers=headers) as response,
        ):
            return response.status, dict(response.headers), await response.read()

    return asyncio.run(go())


@dataclass
class Pushed:
    """A `runwatch serve` with http_ingest on, its store and its topic."""

    url: str  # .../events, no credentials
    metrics: str
    db: Path
    topics: Topics
    log: Path

    def with_code(self, code: str = SECRET) -> str:
        return f"{self.url}?code={code}"

    def post(self, body: Any, *, code: str = SECRET, **headers: str) -> Answer:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        sent = {"Content-Type": "application/json", **headers}
        return call("POST", self.with_code(code), data, sent)

    def stored(self) -> dict[str, str]:
        """RunId -> Status of the events in the store."""
        try:
            with sqlite3.connect(self.db, timeout=10) as conn:
                rows = conn.execute('select "RunId", "Status" from events').fetchall()
        except sqlite3.OperationalError:
            return {}
        return dict(rows)

    def metric(self, line_start: str) -> float:
        _, _, body = call("GET", self.metrics)
        for line in body.decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def start_serve(
    tmp: Path, topics: Topics, *, publish_timeout_s: float = 10.0
) -> tuple[subprocess.Popen[bytes], Pushed]:
    db = tmp / "runwatch.db"
    config = write_config(tmp / "runwatch.yaml", topics, f"sqlite:///{db}")
    secret_file = tmp / "ingest-secret"
    secret_file.write_text(f"{SECRET}\n{OLD_SECRET}\n")
    secret_file.chmod(0o600)  # secret files readable by others are refused
    data = yaml.safe_load(config.read_text())
    port, metrics_port = free_port(), free_port()
    data["metrics"]["listen"] = f"127.0.0.1:{metrics_port}"
    data["http_ingest"] = {
        "enabled": True,
        "listen": f"127.0.0.1:{port}",
        "secret_file": str(secret_file),
        "max_body_bytes": MAX_BODY,
        "publish_timeout_s": publish_timeout_s,
        "allowed_rate": 100,
        "header_timeout_s": SLOW_S,
        "body_timeout_s": SLOW_S,
    }
    config.write_text(yaml.safe_dump(data))
    process = serve(config)
    pushed = Pushed(
        url=f"http://127.0.0.1:{port}/events",
        metrics=f"http://127.0.0.1:{metrics_port}/metrics",
        db=db,
        topics=topics,
        log=tmp / "serve.log",
    )

    def listening() -> bool:
        assert process.poll() is None, pushed.log.read_text()
        try:
            return call("OPTIONS", pushed.url)[0] == 400  # no WebHook-Request-Origin
        except aiohttp.ClientError:
            return False

    wait_for(listening, timeout=60, interval=0.2)
    return process, pushed


def stop_serve(process: subprocess.Popen[bytes], pushed: Pushed) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, pushed.log.read_text()[-4000:]


@pytest.fixture(scope="module")
def pushed(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    suffix = uuid.uuid4().hex[:6]
    topics = Topics(broker.bootstrap, f"push-{suffix}", f"push-dead-{suffix}", f"push-{suffix}")
    create_topics(broker.bootstrap, {topics.topic: 3, topics.dead_letter_topic: 1})
    process, running = start_serve(tmp_path_factory.mktemp("push"), topics)
    yield running
    stop_serve(process, running)


def run_event(run_id: str, *, cloud: bool, status: str = "Failed") -> dict[str, Any]:
    """The documented RunStatusChanged event (Event Grid or CloudEvents schema) with its run id
    and time changed, so that each test stores rows of its own."""
    name = (
        "runstatuschanged.cloudevents-schema.json"
        if cloud
        else "runstatuschanged.eventgrid-schema.json"
    )
    event: dict[str, Any] = copy.deepcopy(sample(name)[0])
    time = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    event["time" if cloud else "eventTime"] = time
    event["id"] = str(uuid.uuid4())
    event["data"]["runId"] = run_id
    event["data"]["runStatus"] = status
    return event


# --- handshakes ---------------------------------------------------------------------------------


def test_event_grid_subscription_validation(pushed: Pushed) -> None:
    status, headers, body = pushed.post(
        sample("subscription-validation-event.json"), **{"aeg-event-type": "SubscriptionValidation"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    expected = sample("subscription-validation-response.json")
    assert (
        orjson.loads(body)
        == expected
        == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    )


def test_cloudevents_webhook_abuse_protection_handshake(pushed: Pushed) -> None:
    asked = {"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "120"}
    status, headers, _ = call("OPTIONS", pushed.with_code(), headers=asked)
    assert status == 200
    assert headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert headers["WebHook-Allowed-Rate"] == "100"
    # an origin not configured gets no consent (the header's absence is the refusal)
    other = {"WebHook-Request-Origin": "eventemitter.example.com"}
    status, headers, body = call("OPTIONS", pushed.with_code(), headers=other)
    assert status == 403 and "WebHook-Allowed-Origin" not in headers
    assert b"allowed_origins" in body
    # the handshake protects the sender, it authenticates nobody: no secret needed (a
    # subscription may send its secret as a delivery-attribute header on deliveries only)
    status, headers, _ = call("OPTIONS", pushed.url, headers=asked)
    assert status == 200 and headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert call("OPTIONS", pushed.url)[0] == 400  # no WebHook-Request-Origin


# --- batches ------------------------------------------------------------------------------------


def test_batches_in_every_schema_are_published_and_stored(pushed: Pushed) -> None:
    documented = sample("runstatuschanged.eventgrid-schema.json")  # verbatim, 2017, "failed"
    grid_batch = [*documented, run_event("eg-2", cloud=False, status="running")]
    grid_batch.append({**run_event("x", cloud=False), "eventType": "Microsoft.Storage.BlobCreated"})
    status, _, body = pushed.post(grid_batch, **{"aeg-event-type": "Notification"})
    assert (status, orjson.loads(body)) == (200, {"accepted": 2, "skipped": 1, "rejected": 0})

    cloud_batch = [run_event("ce-1", cloud=True), run_event("ce-2", cloud=True, status="completed")]
    status, _, _ = pushed.post(
        cloud_batch, **{"Content-Type": "application/cloudevents-batch+json"}
    )
    assert status == 200
    single = run_event("ce-3", cloud=True)
    status, _, _ = pushed.post(single, **{"Content-Type": "application/cloudevents+json"})
    assert status == 200
    # CloudEvents HTTP binary mode: attributes as ce- headers, data as the body
    binary = run_event("ce-bin", cloud=True)
    headers = {f"ce-{k}": str(v) for k, v in binary.items() if k != "data"}
    status, _, _ = pushed.post(binary["data"], **headers)
    assert status == 200

    expected = {
        "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5": "Failed",
        "eg-2": "Running",
        "ce-1": "Failed",
        "ce-2": "Completed",
        "ce-3": "Failed",
        "ce-bin": "Failed",
    }
    wait_for(lambda: expected.items() <= pushed.stored().items(), timeout=60)
    assert pushed.metric('runwatch_http_ingest_requests_total{result="accepted"}') >= 4
    # Kafka stays the spine: one message per event, keyed by the run tree's root
    keys = {r.key for r in pushed.topics.read(pushed.topics.topic, 6)}  # type: ignore[attr-defined]
    assert {b"eg-2", b"ce-1", b"ce-bin"} <= keys


def test_bad_bodies_are_4xx_with_the_reason(pushed: Pushed) -> None:
    status, _, body = pushed.post(b'{"not json')
    assert status == 400
    answer = orjson.loads(body)
    assert answer["error"] == "not_json" and answer["detail"]
    native = {"TimeGenerated": datetime.now(UTC).isoformat(), "RunId": "n", "Status": "Failed"}
    status, _, body = pushed.post(native)
    assert (status, orjson.loads(body)["error"]) == (400, "unknown_shape")
    bad_status = run_event("bad", cloud=False, status="exploded")
    status, _, body = pushed.post(bad_status)
    assert (status, orjson.loads(body)["error"]) == (400, "schema")
    assert b"unknown status" in body
    status, _, body = pushed.post([bad_status, bad_status])  # a batch of only bad entries
    assert (status, orjson.loads(body)["error"]) == (400, "no_valid_records")
    status, _, body = pushed.post(b"[]")
    assert (status, orjson.loads(body)["error"]) == (400, "unknown_shape")
    assert pushed.metric('runwatch_http_ingest_requests_total{result="bad_request"}') >= 5


def test_a_bad_entry_in_a_good_batch_is_dead_lettered_by_ingest(pushed: Pushed) -> None:
    """The good entries are stored; the bad one is published alone, for ingest to keep on the
    dead-letter topic with its reason: nothing pushed is dropped, nothing retried for ever."""
    batch = [run_event("mixed-ok", cloud=False), run_event("mixed-bad", cloud=False, status="??")]
    status, _, body = pushed.post(batch)
    assert (status, orjson.loads(body)) == (200, {"accepted": 1, "skipped": 0, "rejected": 1})
    wait_for(lambda: "mixed-ok" in pushed.stored(), timeout=60)
    letters = pushed.topics.read(pushed.topics.dead_letter_topic, 1)
    assert any(b"mixed-bad" in r.value for r in letters)  # type: ignore[attr-defined]


def test_missing_or_wrong_secrets_are_refused_and_nothing_is_published(pushed: Pushed) -> None:
    intruder = [run_event("intruder-1", cloud=False)]
    body = orjson.dumps(intruder)
    status, headers, _ = call("POST", pushed.url, body, {"Content-Type": "application/json"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert pushed.post(intruder, code="wrong")[0] == 403
    bearer = {"Authorization": "Bearer wrong", "Content-Type": "application/json"}
    assert call("POST", pushed.url, body, bearer)[0] == 403
    # the right secret as a bearer token (an Event Grid delivery attribute), and the old one
    # of a rotation (the second line of the secret file), are accepted
    right = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    marker = orjson.dumps([run_event("after-intruder", cloud=False)])
    assert call("POST", pushed.url, marker, right)[0] == 200
    assert pushed.post([run_event("old-secret", cloud=False)], code=OLD_SECRET)[0] == 200
    wait_for(lambda: {"after-intruder", "old-secret"} <= pushed.stored().keys(), timeout=60)
    assert not any(run.startswith("intruder") for run in pushed.stored())
    on_topic = pushed.topics.read(pushed.topics.topic, 1000, timeout=5)
    assert not any(b"intruder-1" in r.value for r in on_topic)  # type: ignore[attr-defined]
    assert pushed.metric('runwatch_http_ingest_requests_total{result="unauthorized"}') >= 1
    assert pushed.metric('runwatch_http_ingest_requests_total{result="forbidden"}') >= 2


def test_an_oversize_body_is_413(pushed: Pushed) -> None:
    big = orjson.dumps([run_event(f"big-{i}", cloud=False) for i in range(40)])
    assert len(big) > MAX_BODY
    status, _, body = pushed.post(big)
    assert (status, orjson.loads(body)["error"]) == (413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while reading
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    headers = {"Content-Type": "application/json"}
    assert call("POST", pushed.with_code(), chunks(), headers)[0] == 413
    assert not any(run.startswith("big-") for run in pushed.stored())


def test_slow_clients_are_cut_off(pushed: Pushed) -> None:
    """Headers that never end: the connection is closed; a body that never arrives: 408."""
    port = int(pushed.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /events?code={SECRET} HTTP/1.1\r\nHost: runwatch\r\n".encode())
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, nothing answered
        assert time.monotonic() - started < SLOW_S + 10
    head = (
        f"POST /events?code={SECRET} HTTP/1.1\r\nHost: runwatch\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert pushed.metric('runwatch_http_ingest_requests_total{result="timeout"}') >= 1


def test_the_secret_is_never_logged(pushed: Pushed) -> None:
    """Last in the module: every request above (with `?code=` and Bearer) has been logged."""
    pushed.post(b"{}", code=SECRET)  # refusals, logged, with a secret in the URL
    pushed.post(b"{}", code=OLD_SECRET + "x")
    text = pushed.log.read_text()
    assert "http ingest on http://127.0.0.1" in text
    assert "-> 403" in text  # refusals are logged ...
    assert SECRET not in text and OLD_SECRET not in text  # ... without the query string


# --- the broker ---------------------------------------------------------------------------------


def test_503_while_the_broker_is_down_then_200_once_it_is_back(tmp_path: Path) -> None:
    """A private broker (stopping the session's would break other tests). Event Grid retries a
    503; once the broker is back, the push is accepted and the event is stored."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as private:
        suffix = uuid.uuid4().hex[:6]
        topics = Topics(private.bootstrap, f"down-{suffix}", f"down-dead-{suffix}", f"g-{suffix}")
        create_topics(private.bootstrap, {topics.topic: 1, topics.dead_letter_topic: 1})
        process, pushed = start_serve(tmp_path, topics, publish_timeout_s=2.0)
        try:
            assert pushed.post([run_event("before-outage", cloud=False)])[0] == 200
            wait_for(lambda: "before-outage" in pushed.stored(), timeout=60)
            private.stop()
            status, _, body = pushed.post([run_event("during-outage", cloud=False)])
            assert (status, orjson.loads(body)["error"]) == (503, "unavailable")
            private.start()
            create_topics(private.bootstrap, {topics.topic: 1, topics.dead_letter_topic: 1})
            after = [run_event("after-outage", cloud=False)]
            wait_for(lambda: pushed.post(after)[0] == 200, timeout=90, interval=1.0)
            on_topic = topics.read(topics.topic, 1)
            assert any(b"after-outage" in r.value for r in on_topic)  # type: ignore[attr-defined]
            assert pushed.metric('runwatch_http_ingest_requests_total{result="unavailable"}') >= 1
        finally:
            stop_serve(process, pushed)
