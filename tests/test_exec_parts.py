"""The pure parts of `runwatch run exec`: the failure text made of stderr, how an exit becomes
a run's end, the spool on disk, the front's flags. The end-to-end behaviour is in
tests/test_exec.py."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from consumers.client.env import note_in_journal, read_journal
from consumers.client.launch import ExecRequest, parser, request_from
from consumers.client.outcome import ended, not_started
from consumers.client.spool import Destination, SpoolFile, destinations, leftovers, spool_root
from consumers.client.tail import StderrTail, exception_name, failure_text
from consumers.model.errors import ConfigError
from tests.conftest import RUNWATCH

TRACEBACK = """\
epoch 1 loss 0.3
Traceback (most recent call last):
  File "train.py", line 9, in <module>
    main()
  File "train.py", line 6, in main
    step(batch)
ValueError: bad shape (3, 4)
"""

CHAINED = """\
loading
Traceback (most recent call last):
  File "a.py", line 2, in <module>
    open("x")
FileNotFoundError: [Errno 2] No such file or directory: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "a.py", line 4, in <module>
    raise RuntimeError("no data")
RuntimeError: no data
"""


def test_a_traceback_is_kept_whole_and_names_the_error() -> None:
    assert failure_text(TRACEBACK) == TRACEBACK.partition("\n")[2].rstrip("\n")
    assert exception_name(TRACEBACK) == "ValueError"
    chained = failure_text(CHAINED)
    assert chained.startswith("Traceback") and "FileNotFoundError" in chained
    assert chained.endswith("RuntimeError: no data")
    assert exception_name(CHAINED) == "RuntimeError"


def test_without_a_traceback_the_last_lines_as_a_terminal_shows_them() -> None:
    text = "".join(f"line {i}\n" for i in range(50)) + "10%\r50%\r100% done\r\n"
    kept = failure_text(text, last_lines=3)
    assert kept == "line 48\nline 49\n100% done"
    assert exception_name(text) is None


def test_a_huge_traceback_keeps_its_head_and_its_exception() -> None:
    frames = "".join(f'  File "m.py", line {i}, in f{i}\n    f{i + 1}()\n' for i in range(2000))
    text = f"Traceback (most recent call last):\n{frames}RecursionError: too deep\n"
    kept = failure_text(text, limit=2000)
    assert len(kept) <= 2000
    assert kept.startswith("Traceback (most recent call last):")
    assert kept.endswith("RecursionError: too deep")
    assert "lines cut ..." in kept


def test_the_tail_is_bounded_and_drops_a_cut_line() -> None:
    tail = StderrTail(size=64)
    for i in range(100):
        tail.add(f"line {i:03d}\n".encode())
    text = tail.text()
    assert text.endswith("line 099\n") and len(text) <= 64
    assert text.startswith("line ")  # the line cut in the middle is gone


def _status(code: int | None = None, sig: int | None = None) -> int:
    """A real wait status, from a real child."""
    script = f"import os; os.kill(os.getpid(), {sig})" if sig else f"raise SystemExit({code})"
    pid = os.spawnv(os.P_NOWAIT, sys.executable, [sys.executable, "-c", script])
    return os.waitpid(pid, 0)[1]


def test_exit_codes_and_signals_become_run_ends() -> None:
    done = ended(_status(0), "")
    assert (done.status, done.exit_code, done.message) == ("Completed", 0, None)
    failed = ended(_status(3), "oops\n")
    assert (failed.status, failed.exit_code) == ("Failed", 3)
    assert failed.message == "exit code 3\noops" and failed.error_code == "exit 3"
    killed = ended(_status(sig=signal.SIGKILL), "")
    assert (killed.status, killed.exit_code, killed.error_code) == ("Failed", 137, "SIGKILL")
    assert killed.message == "killed by SIGKILL"
    python = ended(_status(1), TRACEBACK)
    assert python.error_code == "ValueError" and "ValueError: bad shape" in (python.message or "")
    # exec got SIGTERM and passed it on: Canceled, whatever the command made of it
    canceled = ended(_status(7), "", canceled_by=signal.SIGTERM)
    assert (canceled.status, canceled.exit_code) == ("Canceled", 7)
    interrupted = ended(_status(sig=signal.SIGINT), "")  # Ctrl-C reached the command itself
    assert (interrupted.status, interrupted.exit_code) == ("Canceled", 130)
    missing = not_started("no-such-cmd", FileNotFoundError(2, "No such file"))
    assert (missing.status, missing.exit_code) == ("Failed", 127)


def test_spool_keeps_what_was_not_acknowledged(tmp_path: Path) -> None:
    where = Destination("127.0.0.1:9092", "runwatch.run-status")
    spool = SpoolFile(tmp_path, where, "run-1.123")
    numbers = [spool.add(b"run-1", f'{{"i": {i}}}'.encode()) for i in range(3)]
    assert numbers == [0, 1, 2]
    spool.delivered(0)
    # a live exec holds its file: a flusher leaves it alone
    assert list(leftovers(tmp_path, where)) == []
    spool.close()
    assert destinations(tmp_path) == [where]
    [left] = list(leftovers(tmp_path, where))
    assert [(r.key, r.value) for r in left.records] == [
        (b"run-1", b'{"i": 1}'),
        (b"run-1", b'{"i": 2}'),
    ]
    left.delivered(1)
    left.release()
    [left] = list(leftovers(tmp_path, where))
    assert [r.value for r in left.records] == [b'{"i": 2}']
    left.delivered(2)
    left.release()
    assert list(leftovers(tmp_path, where)) == []
    assert not list((tmp_path / where.folder).glob("*.jsonl"))  # emptied files go


def test_spool_removes_a_file_whose_records_all_arrived(tmp_path: Path) -> None:
    where = Destination("b:1", "t")
    spool = SpoolFile(tmp_path, where, "run-2.1")
    spool.delivered(spool.add(b"k", b"v") or 0)
    spool.close()
    assert not list((tmp_path / where.folder).glob("*.jsonl"))


def test_a_full_or_unwritable_spool_says_so(tmp_path: Path) -> None:
    where = Destination("b:1", "t")
    full = SpoolFile(tmp_path, where, "a.1", max_bytes=0)
    assert full.add(b"k", b"v") is None and "full" in (full.problem or "")
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        blocked = SpoolFile(tmp_path / "ro" / "x", where, "b.1")
        assert blocked.add(b"k", b"v") is None and "cannot write" in (blocked.problem or "")


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    where = Destination("b:1", "t")
    spool = SpoolFile(tmp_path, where, "c.1")
    spool.add(b"k", b"v")
    spool.close()
    [path] = (tmp_path / where.folder).glob("*.jsonl")
    with path.open("ab") as handle:
        handle.write(json.dumps({"n": 1, "key": "k"}).encode()[:7])  # a crash mid-write
    [left] = list(leftovers(tmp_path, where))
    assert [r.number for r in left.records] == [0]
    left.release()


def test_spool_root_follows_flag_environment_and_xdg(tmp_path: Path) -> None:
    assert spool_root("/x", {}) == Path("/x")
    assert spool_root(None, {"RUNWATCH_SPOOL_DIR": "/y"}) == Path("/y")
    assert spool_root(None, {"XDG_STATE_HOME": "/s"}) == Path("/s/runwatch/spool")
    assert spool_root(None, {"HOME": "/h"}) == Path("/h/.local/state/runwatch/spool")


def _request(argv: list[str], environ: dict[str, str] | None = None) -> ExecRequest:
    return request_from(parser().parse_args(argv), environ or {})


def test_the_front_names_the_run() -> None:
    request = _request(["--experiment", "e", "--tag", "a=1", "--tag", "b", "--", "ls", "-l"])
    assert request.command == ("ls", "-l")
    assert request.run_id.startswith("e_")
    assert request.tags == (("a", "1"), ("b", None))
    # inside a run (its variables set), --parent of it takes experiment and root from there
    env = {
        "RUNWATCH_RUN_ID": "p1",
        "RUNWATCH_RUN_EXPERIMENT": "pipe",
        "RUNWATCH_RUN_ROOT_ID": "r0",
        "RUNWATCH_RUN_WORKSPACE": "ws",
    }
    child = _request(["--parent", "p1", "--", "true"], env)
    assert child.experiment == "pipe" and child.root == "r0"
    assert child.workspace == "ws" and child.run_id.startswith("p1_")
    with pytest.raises(ConfigError, match="--experiment"):
        _request(["--", "true"])
    with pytest.raises(ConfigError, match="no command"):
        _request(["--experiment", "e"])
    with pytest.raises(ConfigError, match="k=v"):
        _request(["--experiment", "e", "--property", "p", "--", "true"])


def test_the_front_imports_nothing_heavy() -> None:
    """What runs before the command starts: no pydantic, no settings, no kafka-python."""
    code = textwrap.dedent(
        """
        import json, sys
        import consumers.entry, consumers.client.launch, consumers.client.supervisor
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stdout))
    heavy = (
        "pydantic",
        "kafka",
        "sqlalchemy",
        "yaml",
        "consumers.config.settings",
        "consumers.config.service",
        "consumers.config.receivers",
        "consumers.model.events",
    )
    assert sorted(m for m in loaded if m.split(".")[0] in heavy or m in heavy) == []


def test_the_journal_carries_what_the_command_did_to_its_run() -> None:
    """Lines appended by the command's processes (consumers.client.env.note_in_journal),
    a torn last one included, applied over what exec knows."""
    text = "\n".join(
        [
            '{"SetTags":{"quality":"fantastic run","stage":"1"}}',
            '{"AddProperties":{"author":"azureml-user"}}',
            '{"RemoveTags":["stage"]}',
            '{"AddProperties":{"author":"someone else","commit":"abc"}}',
            '{"status":"Failed"}',
            '{"SetTags":{"tor',
        ]
    )
    journal = read_journal(text)
    assert journal.ended == "Failed"
    tags, properties = journal.labels({"team": "vision", "stage": "0"}, {"author": "exec"})
    assert tags == {"team": "vision", "quality": "fantastic run"}
    assert properties == {"author": "exec", "commit": "abc"}  # write-once: exec's stays
    assert read_journal("").ended is None


def test_the_journal_is_written_only_for_the_run_the_process_runs_in(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    path.touch()
    env = {"RUNWATCH_RUN_ID": "r1", "RUNWATCH_RUN_JOURNAL": str(path)}
    note_in_journal("r1", {"SetTags": {"k": "v"}}, env)
    note_in_journal("other-run", {"SetTags": {"x": "y"}}, env)
    note_in_journal("r1", {"status": "Completed"}, {"RUNWATCH_RUN_ID": "r1"})  # no journal
    assert path.read_text() == '{"SetTags":{"k":"v"}}\n'
    path.unlink()
    note_in_journal("r1", {"status": "Completed"}, env)  # exec made it; never created here
    assert not path.exists()


def _at_a_terminal(
    command: list[str], answer: bytes, after: bytes, spool: Path
) -> tuple[int, bytes]:
    """`runwatch run exec -- command` in the foreground of a pseudo-terminal; `answer` is
    typed once `after` has been shown. No broker: exec warns and keeps the statuses."""
    argv = [RUNWATCH, "run", "exec", "--experiment", "tty", "--bootstrap", "127.0.0.1:1"]
    argv += ["--spool", str(spool), "--deliver-timeout", "0", "--", *command]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child becomes exec
        os.execv(RUNWATCH, argv)
    shown, typed = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the terminal's last process is gone
                    chunk = b""
                if not chunk:
                    break
                shown += chunk
            if not typed and after in shown:
                os.write(fd, answer)
                typed = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown


def test_at_a_terminal_the_command_reads_it_and_ctrl_c_cancels(tmp_path: Path) -> None:
    """The command's process group gets the terminal: input() works (a breakpoint() would),
    and Ctrl-C reaches the command, whose run is then Canceled with exit code 130."""
    code, shown = _at_a_terminal(
        [sys.executable, "-c", "print('got', input('name? '))"], b"bob\n", b"name? ", tmp_path
    )
    assert code == 0 and b"got bob" in shown
    spool = tmp_path / "interrupted"
    code, shown = _at_a_terminal(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        b"\x03",
        b"ready",
        spool,
    )
    assert code == 130 and b"KeyboardInterrupt" in shown
    [kept] = spool.glob("*/*.jsonl")  # no broker: the statuses wait in the spool
    lines = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [json.loads(line["value"])["Status"] for line in lines] == [
        "Queued",
        "Running",
        "Canceled",
    ]
