"""Capture what a real Alertmanager POSTs to a webhook receiver, firing then resolved.

Run by hand (not a test): `python tests/samples/alertmanager/capture.py [OUT_DIR]`.
Needs Debian's `prometheus-alertmanager` on PATH. It starts its own Alertmanager on free
ports (cluster listener off, storage in a temporary folder), pushes one alert through
`/api/v2/alerts`, resolves it by pushing it again with `endsAt` in the past, and writes the
two webhook bodies exactly as received (bytes untouched) to OUT_DIR.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

CONFIG = """\
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{hook_port}/hook
        send_resolved: true
"""

ALERT = {
    "labels": {
        "alertname": "RunFailed",
        "severity": "critical",
        "experiment": "train-resnet",
        "cause": "oom",
    },
    "annotations": {"summary": "Run train-resnet_1712 failed: CUDA out of memory"},
    "generatorURL": "http://runwatch.example/runs/train-resnet_1712",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def main(out_dir: Path) -> None:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise SystemExit("prometheus-alertmanager is not installed")
    bodies: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = HTTPServer(("127.0.0.1", _free_port()), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    am_port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "alertmanager.yml")
        config.write_text(CONFIG.format(hook_port=hook.server_address[1]))
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={tmp}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{am_port}"
            _wait(lambda: _get(f"{base}/-/ready"))
            start = datetime.now(UTC).replace(microsecond=0)
            _post(f"{base}/api/v2/alerts", [{**ALERT, "startsAt": _stamp(start)}])
            _wait(lambda: len(bodies) >= 1)
            ended = start + timedelta(seconds=1)
            resolved = {**ALERT, "startsAt": _stamp(start), "endsAt": _stamp(ended)}
            _post(f"{base}/api/v2/alerts", [resolved])
            _wait(lambda: len(bodies) >= 2)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            hook.shutdown()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, body in zip(("webhook-firing.json", "webhook-resolved.json"), bodies, strict=False):
        Path(out_dir, name).write_bytes(body)
        print(name, json.loads(body)["status"])


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _post(url: str, payload: object) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def _wait(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for Alertmanager")
        time.sleep(0.1)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
