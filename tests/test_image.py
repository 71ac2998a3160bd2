"""The container image, built and run, not only written.

deploy/Dockerfile is built with podman (deploy/podman/build-image.sh: a local Debian base,
dependencies from requirements.lock) and run as the image's unprivileged user, with a
read-only root and a mounted config, on the host network against the test broker, a real SMTP
server and the machine's PostgreSQL. A Failed run becomes a mail and a `sent` row; the
image's HEALTHCHECK answers; `podman stop` (SIGTERM) ends it with exit code 0.

Skipped where podman is missing (.ci/run installs podman, runc and debootstrap). The first
build on a machine bootstraps the base (about 75 s, cached in ~/.cache/runwatch and podman's
storage); after that a code change rebuilds in about 10 s.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from consumers.demo.broker import free_port
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from tests.conftest import Topics, wait_for
from tests.servers import SmtpServer

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "deploy" / "podman" / "build-image.sh"
BASE = "localhost/runwatch-base:bookworm"
IMAGE = "localhost/runwatch:test"
PODMAN = shutil.which("podman")
CACHE = Path(
    os.environ.get("RUNWATCH_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runwatch"
)

pytestmark = pytest.mark.skipif(
    PODMAN is None, reason="podman not installed (.ci/run installs podman, runc and debootstrap)"
)


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {"CONTAINERS_CONF": str(ROOT / "deploy" / "podman" / "containers.conf"), **os.environ}
    assert PODMAN is not None
    done = subprocess.run(
        [PODMAN, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image built from this checkout (podman's layer cache makes a rebuild cheap)."""
    has_base = podman("image", "exists", BASE, check=False).returncode == 0
    has_rootfs = (CACHE / "debian-bookworm-python3.tar").exists()
    can_bootstrap = shutil.which("debootstrap") is not None and os.geteuid() == 0
    if not (has_base or has_rootfs or can_bootstrap):
        pytest.skip(f"no base image {BASE}, and making one needs root and debootstrap")
    log = tmp_path_factory.mktemp("image") / "build.log"
    env = {"RUNWATCH_IMAGE": IMAGE, **os.environ}
    with log.open("w") as out:
        done = subprocess.run(
            [str(BUILD)], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False
        )
    assert done.returncode == 0, f"image build failed:\n{log.read_text()[-6000:]}"
    return IMAGE


def failed_run(run_id: str) -> list[RunStatusEvent]:
    t0 = datetime.now(UTC) - timedelta(minutes=3)
    base = {"RunId": run_id, "ExperimentName": "bert-finetune", "WorkspaceName": "ml-prod"}
    return [
        RunStatusEvent.model_validate({**base, "TimeGenerated": t0, "Status": "Running"}),
        RunStatusEvent.model_validate(
            {
                **base,
                "TimeGenerated": t0 + timedelta(minutes=2),
                "Status": "Failed",
                "Message": "CUDA out of memory",
                "Level": "Error",
            }
        ),
    ]


def container_config(topics: Topics, pg: str, smtp_port: int, ops_port: int) -> dict[str, Any]:
    """What an operator mounts at /etc/runwatch/runwatch.yaml. No rules_dir/templates_dir:
    the defaults must find the rules and templates shipped in the image (alert_rules/runs.yaml:
    run-failed -> ml-oncall, chat)."""
    return {
        "kafka": topics.kafka_settings().model_dump(mode="json", exclude_none=True),
        "store": {"url": pg, "migrate_on_start": True},
        "metrics": {"listen": f"127.0.0.1:{ops_port}"},
        "logging": {"level": "INFO", "format": "json"},
        "run_url_template": "https://ml.example.com/runs/{RunId}",
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "runwatch <rw@example.com>"},
        "receivers": {
            "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
            "chat": {"email": {"to": ["chat@example.com"]}},
        },
    }


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _sent(pg: str) -> list[tuple[str, str]]:
    with psycopg.connect(pg) as conn:
        rows = conn.execute("select receiver, state from notifications order by receiver")
        return [(str(r), str(s)) for r, s in rows.fetchall()]


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"runwatch-test-{secrets.token_hex(4)}"
    yield name
    podman("rm", "--force", "--volumes", name, check=False)


def test_image_sends_the_mail_answers_its_healthcheck_and_stops_cleanly(
    image: str,
    topics: Topics,
    fresh_pg: str,
    smtp: SmtpServer,
    tmp_path: Path,
    container_name: str,
) -> None:
    ops_port = free_port()
    config = tmp_path / "runwatch.yaml"
    config.write_text(yaml.safe_dump(container_config(topics, fresh_pg, smtp.port, ops_port)))
    config.chmod(0o644)  # read by uid 10001 in the container
    # --health-interval=disable: no systemd timer here; `podman healthcheck run` runs it.
    podman(
        "run", "--detach", "--name", container_name, "--init", "--network", "host",
        "--read-only", "--health-interval", "disable",
        "--env", f"HEALTHCHECK_URL=http://127.0.0.1:{ops_port}/healthz",
        "--volume", f"{config}:/etc/runwatch/runwatch.yaml:ro",
        image,
    )  # fmt: skip

    def logs() -> str:
        done = podman("logs", container_name, check=False)
        return (done.stdout + done.stderr)[-6000:]

    try:
        wait_for(lambda: _status(f"http://127.0.0.1:{ops_port}/readyz") == 200, timeout=60)
    except AssertionError:
        raise AssertionError(f"runwatch in the container never became ready:\n{logs()}") from None

    # Every process of the container runs as the image's user, not root.
    top = podman("top", container_name, "user", "huser", "args").stdout.splitlines()[1:]
    assert top and all(line.split()[:2] == ["runwatch", "10001"] for line in top), top

    topics.produce([encode(e, EventFormat.NATIVE) for e in failed_run("run-in-image")])
    try:
        wait_for(lambda: len(smtp.mails) == 2, timeout=60)
        wait_for(lambda: _sent(fresh_pg) == [("chat", "sent"), ("ml-oncall", "sent")], timeout=30)
    except AssertionError:
        raise AssertionError(f"no mail from the container:\n{logs()}") from None
    assert sorted(m.envelope_to[0] for m in smtp.mails) == [
        "chat@example.com",
        "oncall@example.com",
    ]
    subject = str(smtp.mails[0].message["Subject"])
    assert "Failed" in subject and "run-in-image" in subject

    # The image's HEALTHCHECK, as podman runs it; and it does fail when nothing answers.
    health = podman("healthcheck", "run", container_name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr + logs()
    state = podman("inspect", "--format", "{{.State.Health.Status}}", container_name)
    assert state.stdout.strip() == "healthy"
    wrong = podman(
        "exec", "--env", "HEALTHCHECK_URL=http://127.0.0.1:1/healthz",
        container_name, "python3", "/opt/runwatch/healthcheck.py", check=False,
    )  # fmt: skip
    assert wrong.returncode == 1 and "unhealthy" in wrong.stderr

    # SIGTERM: runwatch finishes and exits 0 well before podman would resort to SIGKILL.
    started = time.monotonic()
    podman("stop", "--time", "30", container_name, timeout=60)
    took = time.monotonic() - started
    code = podman("inspect", "--format", "{{.State.ExitCode}}", container_name).stdout.strip()
    assert code == "0", f"exit code {code} after {took:.1f} s:\n{logs()}"
    assert took < 25, f"stop took {took:.1f} s"
