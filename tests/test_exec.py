"""`runwatch run exec`, `runwatch run wait` and `Run.submit_child` end to end: the real broker,
a real `runwatch serve` subprocess, a real SMTP server and webhook receiver; assertions on what
the store, the mail and the receiver show."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import select

from consumers.config.settings import shipped
from consumers.demo.broker import EmbeddedBroker, create_topics
from consumers.store import Store, open_store
from consumers.store.schema import events, runs
from tests.conftest import RUNWATCH, Topics, serve, wait_for, write_config
from tests.servers import HttpServer, SmtpServer

RULES = """
rules:
  - name: run-failed
    when: {status: [Failed]}
    notify: [oncall]
  - name: heartbeat-lost
    when:
      where: 'properties."runwatch.heartbeat_s" != null'
    absence: {limits: {Running: 3s}, since: last_seen, every: 1s}
    notify: [hook]
"""


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
    return env | more


def make_config(
    tmp: Path,
    topics: Topics,
    store_url: str,
    *,
    smtp: SmtpServer | None = None,
    http: HttpServer | None = None,
) -> Path:
    path = write_config(tmp / "runwatch.yaml", topics, store_url)
    data = yaml.safe_load(path.read_text())
    rules_dir = tmp / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "rules.yaml").write_text(RULES)
    hook = http.url("/hook") if http is not None else "http://127.0.0.1:9/unused"
    data |= {
        "rules_dir": str(rules_dir),
        "templates_dir": str(shipped("templates")),
        "evaluation": {"tick_s": 0.2},
        "receivers": {
            "oncall": {"email": {"to": ["oncall@example.com"]}},
            "hook": {"webhook": {"url": hook, "format": "alertmanager"}, "send_resolved": True},
        },
    }
    if smtp is not None:
        data["smtp"] = {"host": "127.0.0.1", "port": smtp.port, "from": "rw <rw@example.com>"}
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Served:
    """A config, the `runwatch serve` consuming with it, and exec's spool."""

    config: Path
    store_url: str
    spool: Path

    def exec_argv(self, flags: Sequence[str], command: Sequence[str]) -> list[str]:
        config = ["--config", str(self.config), "--spool", str(self.spool)]
        return [RUNWATCH, "run", "exec", *config, *flags, "--", *command]

    def exec(
        self, flags: Sequence[str], command: Sequence[str], **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.exec_argv(flags, command),
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
            check=False,
            **kw,
        )

    def runwatch(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RUNWATCH, *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
            check=False,
        )


@pytest.fixture
def served(
    tmp_path: Path, topics: Topics, store_url: str, smtp: SmtpServer, http: HttpServer
) -> Iterator[Served]:
    config = make_config(tmp_path, topics, store_url, smtp=smtp, http=http)
    open_store(store_url, migrate=True).dispose()
    process = serve(config)
    try:
        yield Served(config, store_url, tmp_path / "spool")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def store(served: Served) -> Iterator[Store]:
    opened = open_store(served.store_url)
    yield opened
    opened.dispose()


def statuses(store: Store, run_id: str) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(events.c.Status).where(events.c.RunId == run_id).order_by(events.c.TimeGenerated)
        )
        return [row.Status for row in rows]


def row(store: Store, run_id: str) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(select(runs).where(runs.c.RunId == run_id)).first()


def error_code(store: Store, run_id: str) -> str | None:
    with store.engine.connect() as conn:
        found = conn.execute(
            select(events.c.ResultSignature).where(
                events.c.RunId == run_id, events.c.Status == "Failed"
            )
        ).scalar()
    return None if found is None else str(found)


def ends_with(store: Store, run_id: str, status: str) -> list[str]:
    wait_for(lambda: status in statuses(store, run_id), timeout=60)
    return statuses(store, run_id)


PY = sys.executable


def test_a_command_that_exits_0_completes_and_its_code_can_tag_the_run(
    served: Served, store: Store
) -> None:
    inside = textwrap.dedent(
        """
        import os, sys
        from consumers.client import Run
        run = Run.get_context()
        run.tag("inside", "yes")
        print("out", run.id, os.environ["RUNWATCH_RUN_EXPERIMENT"])
        print("progress 50%", file=sys.stderr)
        """
    )
    done = served.exec(
        ["--experiment", "exec-ok", "--run-id", "r-ok", "--tag", "team=vision", "--name", "ok"],
        [PY, "-c", inside],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out r-ok exec-ok\n"  # stdout untouched
    assert done.stderr == "progress 50%\n"  # stderr passed through, nothing of exec's own
    assert ends_with(store, "r-ok", "Completed") == ["Queued", "Running", "Completed"]
    wait_for(lambda: row(store, "r-ok").Description == "ok")
    stored = row(store, "r-ok")
    assert stored.Tags == {"team": "vision", "inside": "yes"}
    assert stored.ExperimentName == "exec-ok"
    assert stored.Properties == {"runwatch.heartbeat_s": "30"}


def test_a_non_zero_exit_and_a_signal_fail_the_run(served: Served, store: Store) -> None:
    done = served.exec(
        ["--experiment", "exec-fail", "--run-id", "r-3"],
        ["sh", "-c", "echo 'disk quota exceeded' >&2; exit 3"],
    )
    assert done.returncode == 3
    assert done.stderr == "disk quota exceeded\n"
    assert ends_with(store, "r-3", "Failed") == ["Queued", "Running", "Failed"]
    assert row(store, "r-3").Message == "exit code 3\ndisk quota exceeded"
    assert error_code(store, "r-3") == "exit 3"

    killed = served.exec(
        ["--experiment", "exec-fail", "--run-id", "r-kill"], ["sh", "-c", "kill -KILL $$"]
    )
    assert killed.returncode == 128 + signal.SIGKILL
    assert ends_with(store, "r-kill", "Failed") == ["Queued", "Running", "Failed"]
    assert row(store, "r-kill").Message == "killed by SIGKILL"
    assert error_code(store, "r-kill") == "SIGKILL"

    missing = served.exec(["--experiment", "exec-fail", "--run-id", "r-127"], ["no-such-cmd-x"])
    assert missing.returncode == 127
    assert ends_with(store, "r-127", "Failed") == ["Queued", "Failed"]
    assert row(store, "r-127").Message == "command not found: no-such-cmd-x"


TRAINING = r"""
import sys

def load_batch(index):
    shapes = {0: (3, 3), 1: (3, 4)}
    if shapes[index] != (3, 3):
        raise ValueError(f"bad shape {shapes[index]}")
    return shapes[index]

def train():
    for step in range(2):
        print(f"step {step}\r", end="", file=sys.stderr)
        load_batch(step)

train()
"""


def test_a_python_exception_arrives_whole_in_the_failure_mail(
    served: Served, store: Store, smtp: SmtpServer, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAINING)
    done = served.exec(["--experiment", "exec-mail", "--run-id", "r-exc"], [PY, str(script)])
    assert done.returncode == 1
    assert "ValueError: bad shape (3, 4)" in done.stderr
    ends_with(store, "r-exc", "Failed")
    assert error_code(store, "r-exc") == "ValueError"
    wait_for(lambda: smtp.mails, timeout=60)
    [mail] = smtp.mails
    text = mail.message.get_body(("plain",)).get_content()
    # the traceback, whole and in order, under the exit code
    lines = [
        "exit code 1",
        "Traceback (most recent call last):",
        f'  File "{script}", line 15, in <module>',
        "    train()",
        f'  File "{script}", line 13, in train',
        "    load_batch(step)",
        f'  File "{script}", line 7, in load_batch',
        '    raise ValueError(f"bad shape {shapes[index]}")',
        "ValueError: bad shape (3, 4)",
    ]
    positions = [text.find(line) for line in lines]
    assert -1 not in positions, text
    assert positions == sorted(positions), text
    assert "step 1" not in text.split("Traceback")[1]  # the progress line is not in it


def test_an_interrupted_command_is_canceled(served: Served, store: Store, tmp_path: Path) -> None:
    marker = tmp_path / "got"
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import signal, sys, time, pathlib
        def stop(signum, frame):
            pathlib.Path({str(marker)!r}).write_text(signal.Signals(signum).name)
            sys.exit(42)
        signal.signal(signal.SIGTERM, stop)
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(120)
        """
    )
    argv = served.exec_argv(
        ["--experiment", "exec-cancel", "--run-id", "r-int"], [PY, "-c", script]
    )
    process = subprocess.Popen(argv, env=clean_env())
    try:
        wait_for(ready.exists, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 42  # the command's own exit code
    finally:
        process.kill()
    assert marker.read_text() == "SIGTERM"
    assert ends_with(store, "r-int", "Canceled") == [
        "Queued",
        "Running",
        "CancelRequested",
        "Canceled",
    ]
    assert "SIGTERM" in row(store, "r-int").Message


def test_a_hung_run_raises_one_alert_when_its_heartbeats_stop(
    served: Served, store: Store, http: HttpServer, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    )
    argv = served.exec_argv(
        ["--experiment", "exec-hang", "--run-id", "r-hang", "--heartbeat", "0.5"],
        [PY, "-c", script],
    )
    process = subprocess.Popen(argv, env=clean_env())
    child = 0
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=60)
        child = int(pid_file.read_text())
        wait_for(
            lambda: row(store, "r-hang") is not None and row(store, "r-hang").Status == "Running"
        )
        first = row(store, "r-hang").LastSeen
        # heartbeats keep it alive past the 3 s limit: no alert
        wait_for(lambda: (row(store, "r-hang").LastSeen - first).total_seconds() > 4, timeout=60)
        assert http.on("/hook") == []
        # the node freezes: exec and the command stop, heartbeats stop
        os.kill(process.pid, signal.SIGSTOP)
        os.kill(child, signal.SIGSTOP)
        wait_for(lambda: http.on("/hook"), timeout=60)
        [hit] = http.on("/hook")
        body = orjson.loads(hit.body)
        assert body["status"] == "firing"
        assert body["commonLabels"]["alertname"] == "heartbeat-lost"
        assert body["commonLabels"]["run_id"] == "r-hang"
        assert "has sent nothing for" in body["commonAnnotations"]["summary"]
        frozen = time.monotonic()
        wait_for(lambda: time.monotonic() - frozen > 3, timeout=10)  # more evaluations...
        assert len(http.on("/hook")) == 1  # ...and still one alert
        # it wakes up: heartbeats again, the alert resolves
        os.kill(child, signal.SIGCONT)
        os.kill(process.pid, signal.SIGCONT)
        wait_for(lambda: len(http.on("/hook")) == 2, timeout=60)
        assert orjson.loads(http.on("/hook")[1].body)["status"] == "resolved"
    finally:
        for pid in (child, process.pid):
            if pid:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
        process.wait(timeout=30)


def test_a_child_of_a_run_started_elsewhere_takes_its_experiment_and_root(
    served: Served, store: Store
) -> None:
    """--parent of a run exec does not run in: its experiment, workspace and root are read
    from the store (here a grandchild: the root is the parent's root)."""
    for args in (
        ("--experiment", "pipe", "--run-id", "p-root", "--workspace", "ml"),
        ("--experiment", "pipe", "--run-id", "p-mid", "--parent", "p-root"),
    ):
        started = served.runwatch("run", "start", *args)
        assert started.returncode == 0, started.stderr
    done = served.exec(["--parent", "p-mid", "--run-id", "p-leaf"], ["true"])
    assert done.returncode == 0, done.stderr
    assert ends_with(store, "p-leaf", "Completed") == ["Queued", "Running", "Completed"]
    leaf = row(store, "p-leaf")
    assert (leaf.ParentRunId, leaf.RootRunId) == ("p-mid", "p-root")
    assert (leaf.ExperimentName, leaf.WorkspaceName) == ("pipe", "ml")


PARENT = """\
import json, sys
from consumers.client import Run
from consumers.client.wait import RunFailedError

run = Run.get_context()
kids = [
    run.submit_child([sys.executable, "-c", f"import sys; sys.exit({code})"], name=f"step-{i}")
    for i, code in enumerate((0, 0, 5))
]
ends = []
for kid in kids:
    try:
        ends.append(kid.wait_for_completion(timeout=90, show_output=True)["status"])
    except RunFailedError as exc:
        ends.append(f"raised {exc.error_code}: {exc}")
print(json.dumps({"kids": [kid.id for kid in kids], "ends": ends}))
"""


def test_a_parent_submits_three_children_and_waits_for_them(
    served: Served, store: Store, tmp_path: Path
) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    done = served.exec(["--experiment", "pipeline", "--run-id", "r-parent"], [PY, str(script)])
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout.strip().splitlines()[-1])
    kids = report["kids"]
    assert report["ends"] == [
        "Completed",
        "Completed",
        f"raised exit 5: run {kids[2]} Failed: exit code 5",
    ]
    assert f"run {kids[0]}: Completed" in done.stdout  # show_output
    assert ends_with(store, "r-parent", "Completed") == ["Queued", "Running", "Completed"]
    for index, kid in enumerate(kids):
        stored = row(store, kid)
        assert (stored.ParentRunId, stored.RootRunId) == ("r-parent", "r-parent")
        assert stored.ExperimentName == "pipeline"
        wait_for(lambda kid=kid, index=index: row(store, kid).Description == f"step-{index}")
    assert statuses(store, kids[2]) == ["Queued", "Running", "Failed"]


def test_run_wait_exit_codes(served: Served, store: Store) -> None:
    assert served.exec(["--experiment", "w", "--run-id", "w-ok"], ["true"]).returncode == 0
    assert served.exec(["--experiment", "w", "--run-id", "w-bad"], ["false"]).returncode == 1
    started = served.runwatch("run", "start", "--experiment", "w", "--run-id", "w-cancel")
    assert started.returncode == 0, started.stderr
    assert served.runwatch("run", "cancel", "w-cancel").returncode == 0
    assert served.runwatch("run", "start", "--experiment", "w", "--run-id", "w-on").returncode == 0

    def wait(run_id: str, *more: str) -> subprocess.CompletedProcess[str]:
        return served.runwatch("run", "wait", run_id, *more)

    assert wait("w-ok").returncode == 0
    failed = wait("w-bad")
    assert failed.returncode == 1 and "run w-bad: Failed\nexit code 1" in failed.stderr
    assert wait("w-cancel").returncode == 2
    late = wait("w-on", "--timeout", "1")
    assert late.returncode == 124 and "has not ended within 1s (it is Running)" in late.stderr
    # a run that is not stored yet is waited for like one that has not ended
    waiter = subprocess.Popen(
        [RUNWATCH, "run", "wait", "w-later", "--timeout", "90", "--config", str(served.config)],
        env=clean_env(),
        stderr=subprocess.DEVNULL,
    )
    assert served.exec(["--experiment", "w", "--run-id", "w-later"], ["true"]).returncode == 0
    assert waiter.wait(timeout=90) == 0


def test_exec_while_the_broker_is_down(tmp_path: Path, store_url: str, http: HttpServer) -> None:
    """The command runs; exec warns; its statuses arrive once the broker is back, from exec
    itself (the broker came back while the command ran), from `runwatch run flush`, or from
    the next exec on the machine."""
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")  # not started yet
    topics = Topics(broker.bootstrap, "runs-down", "dead-down", "group-down")
    served = Served(make_config(tmp_path, topics, store_url, http=http), store_url, tmp_path / "a")
    go = tmp_path / "go"
    flush_spool, sweep_spool = tmp_path / "b", tmp_path / "c"

    def exec_with(spool: Path, run_id: str, command: Sequence[str], *flags: str) -> Any:
        argv = [RUNWATCH, "run", "exec", "--config", str(served.config), "--spool", str(spool)]
        argv += ["--experiment", "down", "--run-id", run_id, *flags, "--", *command]
        with (tmp_path / f"{run_id}.err").open("w") as err:
            return subprocess.Popen(argv, env=clean_env(), stderr=err)

    def stderr_of(run_id: str) -> str:
        return (tmp_path / f"{run_id}.err").read_text()

    # 1. the broker stays away longer than exec waits: kept in the spool
    kept = exec_with(flush_spool, "r-kept", ["sh", "-c", "echo ran"], "--deliver-timeout", "0.5")
    assert kept.wait(timeout=60) == 0
    kept_err = stderr_of("r-kept")
    assert "cannot publish to the broker" in kept_err and "the command runs on" in kept_err
    assert "3 status record(s) of run r-kept not delivered" in kept_err
    swept = exec_with(sweep_spool, "r-swept", ["false"], "--deliver-timeout", "0.5")
    assert swept.wait(timeout=60) == 1
    # 2. the broker comes back while the command runs: exec delivers itself
    script = f"import pathlib, time\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)"
    live = exec_with(served.spool, "r-live", [PY, "-c", script])
    wait_for(lambda: "cannot publish to the broker" in stderr_of("r-live"), timeout=60)
    open_store(store_url, migrate=True).dispose()
    broker.start()
    service = None
    try:
        create_topics(broker.bootstrap, {topics.topic: 3, topics.dead_letter_topic: 1})
        service = serve(served.config)
        go.touch()
        assert live.wait(timeout=90) == 0, stderr_of("r-live")
        assert "the broker answers again" in stderr_of("r-live")
        reader = open_store(store_url)
        try:
            assert ends_with(reader, "r-live", "Completed") == ["Queued", "Running", "Completed"]
            # 3. `runwatch run flush` sends what the first exec kept
            flushed = served.runwatch("run", "flush", "--spool", str(flush_spool))
            assert flushed.returncode == 0, flushed.stderr
            assert "sent 3 record(s) from 1 spool file(s)" in flushed.stdout
            assert ends_with(reader, "r-kept", "Completed") == ["Queued", "Running", "Completed"]
            assert not list(flush_spool.glob("*/*.jsonl"))
            # 4. the next exec with that spool sends what the earlier one left
            after = exec_with(sweep_spool, "r-after", ["true"])
            assert after.wait(timeout=60) == 0
            assert ends_with(reader, "r-swept", "Failed") == ["Queued", "Running", "Failed"]
            assert ends_with(reader, "r-after", "Completed") == ["Queued", "Running", "Completed"]
        finally:
            reader.dispose()
    finally:
        for process in (kept, swept, live):
            if process.poll() is None:
                process.kill()
        if service is not None:
            service.terminate()
            service.wait(timeout=30)
        broker.stop()


def test_exec_loads_no_server_side_layer(served: Served, store: Store) -> None:
    """The whole of exec, courier included, with a live broker: the settings' schema is
    loaded (it names noise and rule-file types), not the rules engine, noise control, the
    dispatcher, metrics or the store."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from consumers.entry import main
        code = main(["run", "exec", "--config", {str(served.config)!r}, "--spool",
                     {str(served.spool)!r}, "--experiment", "light", "--run-id", "r-light",
                     "--", "true"])
        assert code == 0
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run(
        [PY, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(orjson.loads(done.stdout.strip().splitlines()[-1]))
    assert "kafka" in loaded
    schema = {"consumers.rules", "consumers.rules.model", "consumers.noise"}
    schema |= {"consumers.config.noise", "consumers.model.timeintervals"}
    server = (
        "consumers.rules",
        "consumers.noise",
        "consumers.dispatch",
        "consumers.telemetry.metrics",
        "consumers.service.app",
        "consumers.ingest.ingestor",
        "consumers.notify.templating",
        "consumers.notify",
        "consumers.store",
        "consumers.cli.main",
        "prometheus_client",
        "aiohttp",
        "jinja2",
        "alembic",
        "sqlalchemy",
    )
    heavy = sorted(
        m for m in loaded - schema if any(m == p or m.startswith(p + ".") for p in server)
    )
    assert heavy == []
    assert ends_with(store, "r-light", "Completed") == ["Queued", "Running", "Completed"]
