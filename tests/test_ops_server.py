"""The metrics/health server under hostile clients: 3,000 half-sent requests leave the
thread count and memory bounded and a normal scrape still answers; slow clients are cut off;
the start-up warning when listening beyond loopback without auth."""

from __future__ import annotations

import contextlib
import logging
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator, Mapping

import pytest
from prometheus_client import CollectorRegistry, Counter

from consumers.config.service import EndpointAuth
from consumers.service.endpoints import Check, OpsServer
from tests.conftest import wait_for
from tests.ops import http_get

HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: runwatch\r\nX-Slow: "  # never finished


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _ready() -> Mapping[str, Check]:
    return {"kafka": Check(True, "connected to broker-1:9092")}


@pytest.fixture
def server() -> Iterator[OpsServer]:
    registry = CollectorRegistry()
    Counter("demo_total", "A counter.", registry=registry).inc()
    ops = OpsServer(("127.0.0.1", 0), registry, _ready, None, header_timeout_s=60).start()
    yield ops
    ops.stop()


def _half_open(port: int, count: int) -> list[socket.socket]:
    """`count` connections, each sending the start of a request and nothing more; connected
    in parallel (one at a time took 7 ms each on a loaded 2-core machine)."""
    selector = selectors.DefaultSelector()
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE)
        sockets.append(sock)
    pending, deadline = count, time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(1):
            selector.unregister(key.fileobj)
            pending -= 1
            with contextlib.suppress(OSError):  # already closed by the server: fine
                key.fileobj.send(HALF_SENT)  # type: ignore[union-attr]
    selector.close()
    assert pending == 0, f"{pending} connections did not complete"
    return sockets


def test_three_thousand_half_sent_requests_stay_bounded(server: OpsServer) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3500:
        pytest.skip(f"needs 3,500 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    base = f"http://127.0.0.1:{server.port}"
    assert http_get(f"{base}/metrics")[0] == 200  # warm: first-use allocations not counted
    threads_before, rss_before = threading.active_count(), _rss_kib()
    sockets = _half_open(server.port, 3000)
    try:
        threads_during, rss_during = threading.active_count(), _rss_kib()
        started = time.monotonic()
        status, _, body = http_get(f"{base}/metrics")
        scrape_s = time.monotonic() - started
        assert status == 200 and b"demo_total 1.0" in body
        assert http_get(f"{base}/healthz")[0] == 200
        assert server.connections <= server.max_connections
    finally:
        for sock in sockets:
            sock.close()
    print(
        f"\n3,000 half-sent requests: threads {threads_before} -> {threads_during}, "
        f"RSS {rss_before / 1024:.1f} -> {rss_during / 1024:.1f} MiB, "
        f"scrape during the flood {scrape_s * 1000:.0f} ms"
    )
    assert threads_during <= threads_before + 2  # the two workers may start; no more
    assert rss_during - rss_before < 64 * 1024  # KiB: the client sockets' buffers and all
    assert scrape_s < 5


def test_a_connection_without_a_complete_request_is_cut_off() -> None:
    ops = OpsServer(("127.0.0.1", 0), CollectorRegistry(), _ready, None, header_timeout_s=0.5)
    ops.start()
    try:
        sock = socket.create_connection(("127.0.0.1", ops.port), timeout=10)
        sock.sendall(HALF_SENT)
        started = time.monotonic()
        assert sock.recv(100) == b""  # the server closed it
        assert time.monotonic() - started < 5
        sock.close()
        idle = socket.create_connection(("127.0.0.1", ops.port), timeout=10)
        assert idle.recv(100) == b""  # connected and said nothing
        idle.close()
        wait_for(lambda: ops.connections == 0, timeout=10)
    finally:
        ops.stop()


def test_a_request_body_is_refused_and_the_connection_ends(server: OpsServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nabc")
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    sock.close()


def test_when_every_slot_is_busy_new_connections_are_refused_not_queued() -> None:
    gate = threading.Event()
    entered: list[int] = []

    def slow() -> Mapping[str, Check]:
        entered.append(1)
        gate.wait(10)
        return _ready()

    ops = OpsServer(("127.0.0.1", 0), CollectorRegistry(), slow, None, max_connections=2)
    ops.start()
    results: list[int] = []
    base = f"http://127.0.0.1:{ops.port}"
    try:
        waiting = [
            threading.Thread(target=lambda: results.append(http_get(f"{base}/readyz")[0]))
            for _ in range(2)
        ]
        for thread in waiting:
            thread.start()
        # both requests in progress (a connected socket whose request has not started yet
        # counts as idle, and an idle one is closed to make room: not this test's case)
        wait_for(lambda: ops.connections == 2 and len(entered) == 2, timeout=10)
        with pytest.raises(OSError):  # refused at once, not held open
            http_get(f"{base}/healthz")
        gate.set()
        for thread in waiting:
            thread.join(10)
        assert results == [200, 200]
        assert http_get(f"{base}/healthz")[0] == 200
    finally:
        gate.set()
        ops.stop()


def test_warning_when_listening_beyond_loopback_without_auth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="consumers.service.endpoints")
    for host, auth, warned in (
        ("127.0.0.1", None, False),
        ("0.0.0.0", EndpointAuth(bearer_token="a-token-123456"), False),
        ("0.0.0.0", None, True),
    ):
        caplog.clear()
        ops = OpsServer((host, 0), CollectorRegistry(), _ready, auth).start()
        ops.stop()
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("has no auth" in m for m in messages) is warned, (host, messages)
