"""No secret in any log line, stored row or CLI output: a real `runwatch serve` with every
kind of secret configured (a PostgreSQL password in RUNWATCH_STORE__URL, an SMTP password, a
webhook whose URL path is its credential and which fails, a webhook signing secret, a metrics
token), then every CLI command that prints config, runs, notifications or errors; the log,
every table of the store and every output are searched for each secret value."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest
import yaml
from psycopg import sql

from consumers.model import redact
from tests.conftest import PG_ADMIN, RUNWATCH, Topics, wait_for
from tests.ops import http_get
from tests.servers import HttpServer
from tests.tls_smtp import TlsSmtpServer, make_certificate


@dataclass(frozen=True)
class PgRole:
    url: str
    password: str


@pytest.fixture
def pg_with_password() -> Iterator[PgRole]:
    """A role with a password and a database it owns (the server may trust 127.0.0.1: the
    password is in the URL either way, which is what must not leak)."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    suffix = secrets.token_hex(4)
    role, database = f"rw_secret_{suffix}", f"runwatch_secret_{suffix}"
    password = f"pg-Pw-{secrets.token_hex(8)}"
    with admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
        try:
            yield PgRole(f"postgresql://{role}:{password}@127.0.0.1/{database}", password)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def private_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def dump_store(url: str) -> str:
    """Every row of every table, as text."""
    out = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            out.append(f"{table}: {rows.fetchall()!r}")
    return "\n".join(out)


def test_no_secret_reaches_a_log_a_row_or_an_output(
    topics: Topics, pg_with_password: PgRole, tmp_path: Path
) -> None:
    smtp_password = f"smtp-Pw-{secrets.token_hex(8)}"
    hook_token = f"HookPath{secrets.token_hex(12)}"
    signing_secret = f"whsec-{secrets.token_hex(12)}"
    metrics_token = f"metrics-{secrets.token_hex(12)}"
    secret_values = {
        "postgres password": pg_with_password.password,
        "smtp password": smtp_password,
        "webhook path": hook_token,
        "webhook signing secret": signing_secret,
        "metrics token": metrics_token,
    }
    cert = make_certificate(tmp_path)
    hook_path = f"/services/T0RUNWATCH/B0CHAT/{hook_token}"
    hooks = HttpServer(responses={hook_path: lambda n: (500, {}, 0.0)}).start()
    mail = TlsSmtpServer(cert, "starttls").__enter__()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "runs.yaml").write_text(
        "rules:\n  - name: run-failed\n    when: {status: [Failed]}\n    notify: [mail, chat]\n"
    )
    metrics_port = __import__("consumers.demo.broker", fromlist=["free_port"]).free_port()
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": topics.kafka_settings().model_dump(mode="json", exclude_none=True),
                "store": {"url": "postgresql://placeholder@127.0.0.1/none"},  # env wins
                "metrics": {
                    "listen": f"127.0.0.1:{metrics_port}",
                    "auth": {
                        "bearer_token_file": str(
                            private_file(tmp_path / "metrics-token", metrics_token)
                        ),
                        "protect_probes": False,
                    },
                },
                "logging": {"level": "DEBUG"},
                "rules_dir": str(rules),
                "smtp": {
                    "host": "127.0.0.1",
                    "port": mail.port,
                    "ca_file": str(cert.cert),
                    "username": "runwatch",
                    "from": "runwatch <runwatch@example.com>",
                },
                "receivers": {
                    "mail": {"email": {"to": ["oncall@example.com"]}},
                    "chat": {
                        "webhook": {
                            "url": hooks.url(hook_path),
                            "format": "slack",
                            "secret_file": str(
                                private_file(tmp_path / "hook-secret", signing_secret)
                            ),
                            "timeout_s": 2,
                        }
                    },
                },
                "notify": {"backoff_initial_s": 0.2, "backoff_max_s": 0.5},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")} | {
        "RUNWATCH_STORE__URL": pg_with_password.url,
        "RUNWATCH_SMTP__PASSWORD": smtp_password,
    }
    outputs: dict[str, str] = {}

    def cli(*args: str) -> str:
        result = subprocess.run(
            [RUNWATCH, *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        text = result.stdout + result.stderr
        outputs[" ".join(args)] = text
        assert result.returncode in (0, 1, 3), text  # 3: the unreachable store below
        return result.stdout

    log = tmp_path / "serve.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [RUNWATCH, "serve", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        event = {
            "TimeGenerated": datetime.now(UTC).isoformat(),
            "RunId": "secret-run-1",
            "Status": "Failed",
            "ExperimentName": "exp",
            "Message": "boom",
        }
        topics.produce([orjson.dumps(event), b"not json at all"])
        wait_for(lambda: len(mail.mails) == 1, timeout=90)
        wait_for(lambda: len(hooks.on(hook_path)) >= 3, timeout=60)  # failing, retried
        base = f"http://127.0.0.1:{metrics_port}"
        status, _, body = http_get(f"{base}/metrics", token=metrics_token)
        assert status == 200
        outputs["/metrics"] = body.decode()
        outputs["/readyz"] = http_get(f"{base}/readyz")[2].decode()
        outputs["/readyz with token"] = http_get(f"{base}/readyz", token=metrics_token)[2].decode()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        hooks.stop()
        mail.__exit__()
    assert mail.logins and all(login.encrypted for login in mail.logins)

    # every command that prints config, runs, notifications or errors
    store = ("--config", str(config))
    cli("config", "check", str(config))
    assert "pg-Pw" not in outputs[f"config check {config}"]
    notes = orjson.loads(cli("notifications", "list", "-o", "json", *store))
    chat = next(n for n in notes if n["receiver"] == "chat")
    assert chat["reason"] == "http_500" and chat["last_error"]
    assert f"http://127.0.0.1:{hooks.port}/…#" in chat["last_error"]  # named, not revealed
    cli("notifications", "list", *store)
    cli("notifications", "list", "--state", "dead", *store)
    cli("notifications", "retry", chat["id"], *store)
    cli("dead-letters", "list", *store)
    cli("dead-letters", "list", "-o", "json", *store)
    cli("runs", "list", *store)
    cli("runs", "list", "-o", "json", *store)
    cli("runs", "show", "secret-run-1", *store)
    cli("rules", "test", str(rules), "--since", "1d", *store)
    cli("rules", "check", "--config", str(config))
    cli("silence", "list", "--all", *store)
    cli("db", "upgrade", *store)
    cli("runs", "show", "missing", "--store", pg_with_password.url)  # the URL as a flag
    cli("runs", "list", "--store", pg_with_password.url.replace("127.0.0.1", "127.0.0.1:1"))

    texts = {"serve log": log.read_text(), "store": dump_store(pg_with_password.url)}
    texts |= {f"`runwatch {name}`": text for name, text in outputs.items()}
    assert "notification" in texts["serve log"] and "http_500" in texts["serve log"]
    leaks = [
        f"{what} in {where}"
        for where, text in texts.items()
        for what, value in secret_values.items()
        if value in text
    ]
    assert not leaks, leaks
    assert hook_path not in texts["serve log"] and hook_path not in texts["store"]


def test_redaction_rules() -> None:
    redact.register("Known-Secret-42")
    redact.register_url("https://chat.example.com/hooks/team-ml-XYZ123456")
    cases = {
        "postgresql://u:pw@h/db": "postgresql://u:***@h/db",
        "postgresql+psycopg://u:p@ss@h:5432/db?x=1": "postgresql+psycopg://u:***@h:5432/db?x=1",
        "sqlite:///./runwatch.db": "sqlite:///./runwatch.db",
        "GET https://x.io/a?token=abc&page=2&sig=zz": "GET https://x.io/a?token=***&page=2&sig=***",
        "Endpoint=sb://n.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=Ab=":
            "Endpoint=sb://n.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=***",
        "Authorization: Bearer abcdefghijkl": "Authorization: Bearer ***",
        "password=hunter22 user=x": "password=*** user=x",
        "the Known-Secret-42!": "the ***!",
        "in json: \"Known-Secret-42\"": "in json: \"***\"",
        "http://127.0.0.1:9464/metrics": "http://127.0.0.1:9464/metrics",
        "rule=run-failed severity=2": "rule=run-failed severity=2",
    }  # fmt: skip
    for text, expected in cases.items():
        assert redact.redact(text) == expected, text
        assert redact.redact(expected) == expected  # idempotent
    slack = redact.redact("POST https://hooks.slack.com/services/T1/B2/abcdef failed")
    assert slack.startswith("POST https://hooks.slack.com/…#") and "abcdef" not in slack
    configured = redact.redact("url='https://chat.example.com/hooks/team-ml-XYZ123456?x=1'")
    assert configured.startswith("url='https://chat.example.com/…#")
    assert "team-ml" not in configured and redact.redact(configured) == configured
    assert redact.redact("bare team-ml-XYZ123456") == "bare ***"
    one = redact.url("https://hooks.slack.com/services/T1/B2/one")
    two = redact.url("https://hooks.slack.com/services/T1/B2/two")
    assert one != two and one.startswith("https://hooks.slack.com/…#")  # told apart
    redact.register("abc")  # too short to mask everywhere
    assert redact.redact("abcdef") == "abcdef"
