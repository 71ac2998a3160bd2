"""What `runwatch serve` loads: the heavy parts only migrations, the command line's other
commands, PostgreSQL or the ops/HTTP-ingest servers need stay out of a SQLite service's
memory for its whole life (docs/operations.md, "Memory"). The service runs as its own
process with an import recorder in front of the real import system; a Failed run must still
be mailed and posted, and nothing on the list may have been looked for. The main case runs
with the interpreter and allocator settings of the image (deploy/Dockerfile: python -OO, two
malloc arenas), so that what the image saves memory with is what is tested."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from consumers.model.events import RunStatusEvent
from consumers.store import open_store
from tests.conftest import Topics, settings_for, wait_for
from tests.servers import HttpServer, SmtpServer

ROOT = Path(__file__).resolve().parent.parent


def image_env() -> dict[str, str]:
    """The settings deploy/Dockerfile's runtime stage gives every process in the image that
    change how it runs (not where it logs or finds its files)."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :]
    return dict(
        re.findall(r"\b(PYTHONOPTIMIZE|PYTHONNODEBUGRANGES|MALLOC_ARENA_MAX)=(\S+)", runtime)
    )


# Imported by nothing a SQLite `serve` does, with metrics, console and HTTP ingest off.
NOT_NEEDED = (
    "alembic",  # migrations: the store is already at this build's schema
    "mako",
    "psycopg",  # PostgreSQL's driver and SQLAlchemy's dialect for it
    "psycopg_pool",
    "sqlalchemy.dialects.postgresql",
    "aiohttp.web",  # the ops port's and HTTP ingest's servers
    "consumers.ingest.http",
    "consumers.webconsole",
    "consumers.client",  # `runwatch run ...` and `runwatch silence ...`
    "consumers.cli.run",
    "consumers.cli.silence",
    "consumers.demo",
    "hypothesis",
)

# Records every module on NOT_NEEDED the process looks for (and still lets it load, so that
# the service behaves exactly as without the recorder), then runs the `runwatch` command.
RECORDER = """
import sys
from importlib.abc import MetaPathFinder

WATCHED = tuple(sys.argv[1].split(","))
RECORD = open(sys.argv[2], "a", buffering=1)


class Recorder(MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == w or name.startswith(w + ".") for w in WATCHED):
            RECORD.write(name + "\\n")
        return None


sys.meta_path.insert(0, Recorder())
from consumers.entry import main

sys.exit(main(sys.argv[3:]))
"""


def _serve(
    tmp_path: Path,
    topics: Topics,
    store_url: str,
    smtp: SmtpServer,
    http: HttpServer,
    env: dict[str, str],
) -> tuple[subprocess.Popen[bytes], Path]:
    settings = settings_for(topics, store_url)
    data = settings.model_dump(mode="json", exclude_none=True)
    data["metrics"]["enabled"] = False
    data["smtp"] = {"host": "127.0.0.1", "port": smtp.port}
    data["receivers"] = {  # the ones the shipped alert_rules notify
        "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
        "chat": {"webhook": {"url": http.url("/chat")}},
    }
    config = tmp_path / "runwatch.yaml"
    config.write_text(yaml.safe_dump(data))
    record = tmp_path / "imports.txt"
    record.touch()
    log = (tmp_path / "serve.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RECORDER,
            ",".join(NOT_NEEDED),
            str(record),
            "serve",
            "--config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ | env,
    )
    log.close()
    return process, record


def _fail_a_run(topics: Topics, run_id: str) -> None:
    event = RunStatusEvent(
        TimeGenerated=datetime.now(UTC), RunId=run_id, Status="Failed", Message="OOM"
    )
    topics.produce([event.to_json()], keys=[run_id.encode()])


def _stop(process: subprocess.Popen[bytes], tmp_path: Path) -> None:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    assert code == 0, (tmp_path / "serve.log").read_text()


def _run_until_mailed(
    tmp_path: Path,
    topics: Topics,
    store_url: str,
    smtp: SmtpServer,
    http: HttpServer,
    env: dict[str, str] | None = None,
) -> list[str]:
    process, record = _serve(tmp_path, topics, store_url, smtp, http, env or {})
    try:
        _fail_a_run(topics, "fp-1")
        wait_for(lambda: len(smtp.mails) == 1 and len(http.on("/chat")) == 1, timeout=60)
    finally:
        if process.poll() is None:
            _stop(process, tmp_path)
    assert "fp-1" in smtp.mails[0].raw.decode()
    return sorted(set(record.read_text().split()))


def test_a_sqlite_serve_at_the_current_schema_never_loads_what_it_does_not_need(
    tmp_path: Path, topics: Topics, store_url: str, smtp: SmtpServer, http: HttpServer
) -> None:
    open_store(store_url, migrate=True).dispose()  # `runwatch db upgrade` before the start
    env = image_env()
    assert env["PYTHONOPTIMIZE"] == "2"  # docstrings and asserts left out: ~4 MB
    assert _run_until_mailed(tmp_path, topics, store_url, smtp, http, env) == []


def test_a_first_start_migrates_with_alembic_and_the_recorder_sees_it(
    tmp_path: Path, topics: Topics, store_url: str, smtp: SmtpServer, http: HttpServer
) -> None:
    """The control: an empty store is migrated at start (migrate_on_start), which needs
    Alembic (held until the next start); the recorder reports it, so it can fail."""
    seen = _run_until_mailed(tmp_path, topics, store_url, smtp, http)
    assert "alembic" in seen
    assert not [name for name in seen if name.startswith(("psycopg", "consumers.client"))]
