"""Producers choose run ids, experiment names, tags and messages; receivers choose error
texts. None of it may drive the terminal of whoever runs the CLI: every table and text output
shows control characters (ESC, BEL, CR, C1, bidi overrides) escaped, and the JSON outputs
still decode to exactly the stored values."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from consumers.cli.console import SafeStream, guarded_output, sanitize
from consumers.cli.main import main
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.outbox.recorder import recording
from consumers.store import Store, open_store
from consumers.store.outbox import Outbox
from consumers.store.silences import add_silence
from consumers.store.writer import DeadLetter
from tests.conftest import Topics

HOSTILE_ID = "\x1b]0;PWNED\x07\x1b[2J"  # retitle the window, clear the screen
EXPERIMENT = "exp\rOVERWRITTEN"
MESSAGE = "failed \x9b31mC1-red\x9b0m \u202etxt.exe \x85next \x00nul"
TAG = "\x1b[8mhidden\x1b[0m"
# Nothing of these may reach a terminal raw: ESC, BEL, CR, CSI (C1), NEL, RLO, NUL, DEL.
RAW = ("\x1b", "\x07", "\r", "\x9b", "\x85", "\u202e", "\x00", "\x7f")
NOW = datetime.now(UTC)


def event(**fields: object) -> RunStatusEvent:
    values: dict[str, object] = {
        "TimeGenerated": NOW - timedelta(minutes=5),
        "RunId": HOSTILE_ID,
        "Status": "Failed",
        "ExperimentName": EXPERIMENT,
        "Message": MESSAGE,
        "Tags": {"owner": TAG, "x\x1b[1m": None},
        "WorkspaceName": "ws",
    }
    values.update(fields)
    return RunStatusEvent.model_validate(values)


@pytest.fixture
def hostile(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'runwatch.db'}"
    store: Store = open_store(url, migrate=True)
    try:
        failed = event()
        child = event(RunId="child\x1b[2Jrun", ParentRunId=HOSTILE_ID, Status="Running")
        alert = Alert(
            rule="run\x1b]0;rule\x07failed",
            receivers=("chat", "mail"),
            throttle_key=f"RunId={HOSTILE_ID}",
            event=failed,
        )
        letter = DeadLetter(
            "runs", 0, 7, "not_json", "bad byte \x1b[31m at 3\r\x07", None, b"\x1b]0;x\x07"
        )
        store.write_batch(
            [failed, child],
            [letter],
            record=recording([alert], {"chat": "webhook", "mail": "email"}),
        )
        row = Outbox(store).list(limit=5)[0]
        Outbox(store).mark_dead(row.id, "http_500\x1b[2J", "answered \x1b]0;err\x07 500\r")
        add_silence(
            store,
            ["workspace=ws\x1b[5m"],
            duration_s=3600,
            comment="maintenance \x1b]0;silence\x07 \u202eevil",
            now=NOW,
            created_by="ops\x1b[2J",
        )
    finally:
        store.dispose()
    return url


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_clean(text: str) -> None:
    found = [repr(c) for c in RAW if c in text]
    assert not found, f"raw control characters {found} in:\n{text!r}"


def test_notifications_list_the_reproduced_case(hostile: str, cli: Run) -> None:
    code, out, _ = cli("notifications", "list", "--store", hostile)
    assert code == 0
    assert_clean(out)
    assert "\\u001b]0;PWNED\\u0007\\u001b[2J" in out  # shown, escaped, not obeyed
    assert "http_500\\u001b[2J" in out
    code, out, _ = cli("notifications", "list", "--store", hostile, "-o", "json")
    rows = orjson.loads(out)
    assert {row["run_id"] for row in rows} == {HOSTILE_ID}
    assert {row["reason"] for row in rows} >= {"http_500\x1b[2J"}
    assert any(row["last_error"] == "answered \x1b]0;err\x07 500\r" for row in rows)
    assert rows[0]["rule"] == "run\x1b]0;rule\x07failed"


def test_runs_list_and_show(hostile: str, cli: Run) -> None:
    for args in (("runs", "list"), ("runs", "show", HOSTILE_ID)):
        code, out, _ = cli(*args, "--store", hostile)
        assert code == 0, out
        assert_clean(out)
        assert "\\u001b]0;PWNED\\u0007" in out
    _, out, _ = cli("runs", "list", "--store", hostile, "-o", "json")
    runs = {run["runId"]: run for run in orjson.loads(out)}
    assert runs[HOSTILE_ID]["experimentName"] == EXPERIMENT
    assert runs[HOSTILE_ID]["tags"] == {"owner": TAG, "x\x1b[1m": None}
    _, out, _ = cli("runs", "show", HOSTILE_ID, "--store", hostile, "-o", "json")
    detail = orjson.loads(out)
    assert detail["timeline"][0]["message"] == MESSAGE
    assert detail["children"][0]["runId"] == "child\x1b[2Jrun"


def test_dead_letters_and_silences(hostile: str, cli: Run) -> None:
    for args in (("dead-letters", "list"), ("silence", "list")):
        code, out, _ = cli(*args, "--store", hostile)
        assert code == 0, out
        assert_clean(out)
    _, out, _ = cli("dead-letters", "list", "--store", hostile, "-o", "json")
    assert orjson.loads(out)[0]["error"] == "bad byte \x1b[31m at 3\r\x07"
    _, out, _ = cli("silence", "list", "--store", hostile, "-o", "json")
    silence = orjson.loads(out)[0]
    assert silence["comment"] == "maintenance \x1b]0;silence\x07 \u202eevil"
    assert silence["created_by"] == "ops\x1b[2J"


def test_rules_test_and_run_show(hostile: str, cli: Run, tmp_path: Path, topics: Topics) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: failed\n    when: {status: [Failed]}\n    notify: [x]\n")
    code, out, err = cli("rules", "test", str(rules), "--since", "1d", "--store", hostile)
    assert code == 0, err
    assert_clean(out + err)
    assert "\\u001b]0;PWNED" in out
    _, out, _ = cli("rules", "test", str(rules), "--since", "1d", "--store", hostile, "-o", "json")
    assert orjson.loads(out)["alerts"][0]["run_id"] == HOSTILE_ID
    common = ("--store", hostile, "--bootstrap", topics.bootstrap, "--topic", topics.topic)
    code, out, err = cli("run", "show", HOSTILE_ID, "-o", "table", *common)
    assert code == 0, err
    assert_clean(out + err)
    assert "\\u001b]0;PWNED" in out
    _, out, _ = cli("run", "show", HOSTILE_ID, *common)
    assert orjson.loads(out)["runId"] == HOSTILE_ID


def test_error_messages_are_sanitised_too(hostile: str, cli: Run) -> None:
    code, out, err = cli("runs", "show", "no\x1b]0;such\x07run", "--store", hostile)
    assert code == 1 and "not in the store" in err
    assert_clean(out + err)
    code, _, err = cli("silence", "expire", "\x1b[2Jnope", "--store", hostile)
    assert code == 1
    assert_clean(err)


def test_the_sanitiser() -> None:
    assert sanitize("a\x1b[2Jb\x07c\rd") == "a\\u001b[2Jb\\u0007c\\u000dd"
    assert sanitize("line 1\n\tline 2") == "line 1\n\tline 2"  # layout kept in text
    assert sanitize("a\nb\tc\rd", cell=True) == "a b c d"  # and made spaces in a cell
    assert sanitize("\x9b31m \u202e \u2066 \u200b \ufeff \x7f") == (
        "\\u009b31m \\u202e \\u2066 \\u200b \\ufeff \\u007f"
    )
    assert sanitize("日本語 ключ café ✓ 🙂") == "日本語 ключ café ✓ 🙂"  # text is text
    assert sanitize("\U000e0041") == "\\U000e0041"  # tag characters (invisible)
    assert sanitize("\ud800") == "\\ud800"  # a lone surrogate cannot crash the print
    weird = {"k": "\x1b\x9b\u202e\x7f\x00\r\n"}
    as_json = orjson.dumps(weird).decode()
    assert orjson.loads(sanitize(as_json)) == weird  # a JSON text still decodes exactly


def test_the_guard_wraps_stdout_and_stderr_once_and_restores_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys

    before = sys.stdout
    with guarded_output():
        assert isinstance(sys.stdout, SafeStream) and isinstance(sys.stderr, SafeStream)
        with guarded_output():
            assert isinstance(sys.stdout, SafeStream)
            assert not isinstance(sys.stdout.inner, SafeStream)
        print("x\x1b[2Jy")
    assert sys.stdout is before
    assert capsys.readouterr().out == "x\\u001b[2Jy\n"
