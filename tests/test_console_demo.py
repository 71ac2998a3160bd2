"""`make demo` (`runwatch up`) as a newcomer meets it: the console address it prints, the
password file it names, and behind them the simulated failures grouped by cause."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import RUNWATCH, wait_for


def _get(url: str, auth: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except urllib.error.URLError:  # printed before the service listens: not yet
        return 0, ""


def test_the_demo_prints_the_console_and_shows_failures_by_cause(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [RUNWATCH, "up", "--dir", str(tmp_path / "demo"), "--rate", "240", "--seed", "4",
             "--duration", "120"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        printed: list[re.Match[str]] = []

        def announced() -> bool:
            found = re.search(
                r"console (http://\S+/console/)\s+\(user (\S+), password: cat (\S+);",
                log.read_text(),
            )
            printed[:] = [found] if found else []
            return bool(found) or process.poll() is not None

        wait_for(announced, timeout=90)
        assert printed, log.read_text()
        url, user, password_file = printed[0].groups()
        password = Path(password_file).read_text().strip()
        assert password not in log.read_text()  # the password is in the file, not the log
        wait_for(lambda: _get(url, None)[0] == 401, timeout=60, interval=0.5)
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        page: list[str] = []

        def causes() -> bool:
            status, body = _get(url, auth)
            page[:] = [body]
            return status == 200 and len(re.findall(r'<section class="cause"', body)) >= 2

        wait_for(causes, timeout=90, interval=1.0)
        assert "cuda_oom" in page[0] or "data_access" in page[0] or "preempted" in page[0]
        run = re.search(r'href="(/console/runs/[^"]+)"', page[0])
        assert run is not None
        status, body = _get(url.replace("/console/", "") + run.group(1), auth)
        assert status == 200 and "Status timeline" in body and "Notifications" in body
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
