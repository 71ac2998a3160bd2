"""A live `runwatch serve` with the web console on, for tests/test_console*.py: its own
process, the bundled broker, a SQLite store, a real SMTP server as the only receiver, and
one rule (a failed run mails `ml-oncall`). Basic auth on the ops listener."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from consumers.demo.broker import create_topics, free_port
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from tests.conftest import Topics, serve, wait_for
from tests.servers import SmtpServer

USER = "oncall"
PASSWORD = "c0nsole-test-pass"

RULES = """\
rules:
  - name: run-failed
    when:
      status: [Failed]
    severity: 1
    annotations:
      summary: A run failed.
    notify: [ml-oncall]
"""

CUDA_OOM = (
    "Execution failed. User process 'python' exited with status code 1.\n"
    "Traceback (most recent call last):\n"
    '  File "train.py", line 88, in <module>\n'
    "    loss.backward()\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
    "15.77 GiB total capacity; 13.10 GiB already allocated)"
)


class Smtp:
    """The SMTP server, refusing mail (550) while `refuse` is set."""

    def __init__(self) -> None:
        self.refuse = False
        self.server = SmtpServer(
            reply=lambda: "550 5.1.1 mailbox unavailable" if self.refuse else "250 OK"
        ).start()

    def stop(self) -> None:
        self.server.stop()

    def subjects(self) -> list[str]:
        return [str(m.message["Subject"]) for m in self.server.mails]


@dataclass
class LiveConsole:
    url: str  # http://127.0.0.1:PORT/console/
    port: int
    topics: Topics
    smtp: Smtp
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def basic(self) -> str:
        return "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def publish(self, *events: RunStatusEvent) -> None:
        self.topics.produce([encode(e, EventFormat.NATIVE) for e in events])

    def get(self, path: str, *, auth: bool = True) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth:
            request.add_header("Authorization", self.basic)
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_text(self, path: str, text: str, timeout: float = 60) -> str:
        seen: list[str] = []

        def shows() -> bool:
            status, body = self.get(path)
            seen[:] = [body]
            return status == 200 and text in body

        try:
            wait_for(shows, timeout=timeout, interval=0.3)
        except AssertionError:
            raise AssertionError(
                f"{text!r} not on {path}:\n{seen[-1] if seen else ''}\n"
                f"serve log:\n{self.log.read_text()[-3000:]}"
            ) from None
        return seen[-1]


def run_events(
    run_id: str,
    *,
    experiment: str = "bert-large",
    message: str = CUDA_OOM,
    tags: dict[str, str] | None = None,
    ago_s: float = 120,
) -> list[RunStatusEvent]:
    """A run's life: Queued, Running for a while, then Failed with `message`, just now."""
    start = datetime.now(UTC) - timedelta(seconds=ago_s)
    common: dict[str, Any] = {
        "RunId": run_id,
        "ExperimentName": experiment,
        "WorkspaceName": "ws-vision",
        "Tags": tags or {},
        "Properties": {"azureml.runsource": "azureml.scriptrun"},
    }
    steps = [("Queued", 0.0, None), ("Running", 0.25, None), ("Failed", 1.0, message)]
    return [
        RunStatusEvent.model_validate(
            common
            | {
                "Status": status,
                "TimeGenerated": start + timedelta(seconds=ago_s * share - 1),
                "Message": text,
            }
        )
        for status, share, text in steps
    ]


@contextmanager
def live_console(topics: Topics, tmp_path: Path, **notify: Any) -> Iterator[LiveConsole]:
    smtp = Smtp()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "runs.yaml").write_text(RULES)
    port = free_port()
    password_file = tmp_path / "ops-password"
    password_file.write_text(PASSWORD)
    password_file.chmod(0o600)
    config = {
        "kafka": topics.kafka_settings().model_dump(mode="json", exclude_none=True),
        "store": {"url": f"sqlite:///{tmp_path / 'runwatch.db'}"},
        "metrics": {
            "listen": f"127.0.0.1:{port}",
            "auth": {"username": USER, "password_file": str(password_file)},
        },
        "console": {"enabled": True},
        "rules_dir": str(rules),
        "smtp": {"host": "127.0.0.1", "port": smtp.server.port, "tls_mode": "none"},
        "receivers": {"ml-oncall": {"email": {"to": ["oncall@example.com"]}}},
        "notify": {"backoff_initial_s": 0.2, "max_attempts": 1, **notify},
    }
    path = tmp_path / "runwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    process = serve(path)
    live = LiveConsole(
        f"http://127.0.0.1:{port}/console/", port, topics, smtp, process, tmp_path / "serve.log"
    )
    try:
        wait_for(lambda: _answers(live) or process.poll() is not None, timeout=60)
        assert process.poll() is None, live.log.read_text()
        yield live
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        smtp.stop()


def fresh_topics(bootstrap: str) -> Topics:
    """Topics of their own, for a live console shared by a module's tests."""
    suffix = uuid.uuid4().hex[:8]
    made = Topics(bootstrap, f"runs-console-{suffix}", f"dead-console-{suffix}", f"g-{suffix}")
    create_topics(bootstrap, {made.topic: 1, made.dead_letter_topic: 1})
    return made


def _answers(live: LiveConsole) -> bool:
    try:
        return live.get("/healthz")[0] == 200
    except OSError:
        return False
