"""Helpers for the operability tests: a real Prometheus process, HTTP GETs with credentials,
a running `runwatch serve` fed with run events, and PromQL operands of alert expressions."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

from consumers.demo.broker import free_port
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NO_PROMETHEUS = (
    "Prometheus is not installed: `apt-get install -y prometheus` (Debian's package gives "
    "prometheus and promtool; .ci/run installs it)"
)


def http_get(
    url: str, *, token: str | None = None, basic: tuple[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one GET; errors are answers too."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if basic is not None:
        pair = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {pair}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Prometheus:
    """The Debian `prometheus` binary, launched directly (never via the service scripts)
    with its own config, data directory and a free port."""

    def __init__(self, config: Path, workdir: Path) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "prometheus.log").open("wb")
        self.log_path = workdir / "prometheus.log"
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if http_get(f"{self.url}/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"prometheus did not get ready: {self.log_path.read_text()}")

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, _, body = http_get(url)
        answer: dict[str, Any] = orjson.loads(body)
        assert status in (200, 400, 422), (status, body)
        return answer

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def prometheus_config(path: Path, target: str, token_file: Path) -> Path:
    """deploy/prometheus/prometheus.yml pointed at one local runwatch, scraped every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "runwatch"]
    assert len(jobs) == 1
    jobs[0]["static_configs"] = [{"targets": [target]}]
    jobs[0]["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    config["scrape_configs"] = jobs
    path.write_text(yaml.safe_dump(config))
    return path


def run_events(seed: int = 0) -> Iterator[bytes]:
    """Root runs in three experiments going Running -> Completed or Failed, as native JSON."""
    start = datetime.now(UTC) - timedelta(seconds=30)
    for index in range(12):
        run_id = f"ops-{seed}-{index}"
        experiment = f"exp-{'abc'[index % 3]}"
        for offset, status in enumerate(("Running", "Failed" if index % 3 == 0 else "Completed")):
            event = RunStatusEvent(
                TimeGenerated=start + timedelta(seconds=index + offset),
                RunId=run_id,
                Status=status,
                ExperimentName=experiment,
                Message="CUDA out of memory" if status == "Failed" else None,
            )
            yield encode(event, EventFormat.NATIVE)


_DEPTH_OPEN, _DEPTH_CLOSE = "({[", ")}]"


def _mask(expr: str) -> str:
    """The expression with everything inside brackets or quotes replaced by spaces, so that
    top-level operators can be found with a regular expression."""
    out, depth, quote = [], 0, ""
    for char in expr:
        if quote:
            out.append(" ")
            if char == quote:
                quote = ""
            continue
        if char in "\"'`":
            quote = char
            out.append(" ")
        elif char in _DEPTH_OPEN:
            depth += 1
            out.append(" ")
        elif char in _DEPTH_CLOSE:
            depth -= 1
            out.append(" ")
        else:
            out.append(char if depth == 0 else " ")
    return "".join(out)


def operands(expr: str) -> list[str]:
    """What an alert expression measures: its `and`/`or`/`unless` parts, each without the
    threshold comparison. `sum(x) > 1000 and sum(delta(x[10m])) > 0` ->
    `["sum(x)", "sum(delta(x[10m]))"]`. These must return data on a live runwatch even when
    the alert does not fire."""
    expr = " ".join(expr.split())
    parts, last = [], 0
    for match in re.finditer(r"\s(and|or|unless)\s", _mask(expr)):
        parts.append(expr[last : match.start()])
        last = match.end()
    parts.append(expr[last:])
    measured = []
    for part in parts:
        found = re.search(r"(==|!=|>=|<=|>|<)", _mask(part))
        measured.append((part[: found.start()] if found else part).strip())
    return measured


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, with Grafana's interval variables filled in."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "5m")
                .replace("$__range", "5m")
                .replace("$__interval", "15s")
            )
            queries.append((panel["title"], expr))
    return queries
