"""The supervisor of `runwatch run exec`: starts the command, stays out of its way, and ends
its run as the command ends (consumers.client.outcome).

- The command inherits exec's stdin, stdout and every other descriptor, untouched; stderr goes
  through a pipe that a thread copies to exec's stderr as it comes (no buffering) while
  keeping its end for a failure's Message (consumers.client.tail).
- As PID 1 of a container, exec reaps the orphans it inherits, as an init does.
- The command runs in its own process group. SIGINT, SIGTERM and SIGHUP sent to exec cancel
  the run: exec passes the signal on to the group, and SIGKILLs it `--grace` seconds later
  (or at a second signal). SIGUSR1, SIGUSR2 and SIGQUIT are passed on as they are.
- At a terminal (exec in the foreground), the command's group gets the terminal, so that it
  can read it (a `breakpoint()`) and Ctrl-C / Ctrl-Z reach it directly; when it stops, exec
  takes the terminal back and stops too, so that the shell's job control works as usual.
- Publishing is the courier's (consumers.client.courier), on its own thread: the command
  starts before anything heavier than this module is imported.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from types import FrameType

from consumers.client.courier import Courier
from consumers.client.env import (
    ENV_BOOTSTRAP,
    ENV_CONFIG,
    ENV_EXPERIMENT,
    ENV_JOURNAL,
    ENV_PARENT,
    ENV_ROOT,
    ENV_RUN_ID,
    ENV_STORE,
    ENV_TOPIC,
    ENV_WORKSPACE,
    RUN_CONTEXT,
    Journal,
    read_journal,
)
from consumers.client.outcome import CANCELED, Outcome, ended, not_started, signal_name
from consumers.client.request import ExecRequest
from consumers.client.tail import StderrTail

CANCELING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PASSED_ON = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
_RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)  # Python ignores them; the command must not
_STDERR_EOF_S = 1.0  # after the command ends, how long its stderr may stay open (a daemon)
_TERMINAL_STATUSES = ("Completed", "Failed", "Canceled")


class Supervisor:
    def __init__(self, request: ExecRequest) -> None:
        self.request = request
        self.tail = StderrTail()
        self.courier = Courier(request)
        self._pid: int | None = None
        self._done = False  # the command was reaped: its pid may be someone else's now
        self._canceled_by: int | None = None
        self._tty: int | None = None  # the terminal, while the command's group holds it
        self._journal: str | None = None

    # ---- environment ------------------------------------------------------------------
    def connection(self) -> dict[str, str]:
        """exec's --config/--bootstrap/--topic/--store for the command and for exec's own
        settings alike (the environment wins over the file, as the flags must)."""
        request = self.request
        pairs = {
            ENV_CONFIG: request.config,
            ENV_BOOTSTRAP: request.bootstrap,
            ENV_TOPIC: request.topic,
            ENV_STORE: request.store,
        }
        return {name: value for name, value in pairs.items() if value}

    def child_environment(self) -> dict[str, str]:
        request = self.request
        env = {k: v for k, v in os.environ.items() if k not in RUN_CONTEXT}
        context = {
            ENV_RUN_ID: request.run_id,
            ENV_EXPERIMENT: request.experiment,
            ENV_WORKSPACE: request.workspace,
            ENV_PARENT: request.parent,
            ENV_ROOT: request.root,
            ENV_CONFIG: request.config,
            ENV_JOURNAL: self._journal,
        }
        env.update((k, v) for k, v in context.items() if v)
        return env

    def _make_journal(self) -> None:
        """An empty file only this user can write, where the command's processes note what
        they do to the run (consumers.client.env.note_in_journal)."""
        folder = os.environ.get("TMPDIR") or "/tmp"
        for _ in range(5):
            path = os.path.join(folder, f"runwatch-exec-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                continue
            except OSError:
                return  # no temp dir: exec ends the run with the labels it knows
            self._journal = path
            return

    def _read_journal(self) -> Journal:
        path = self._journal
        if path is None:
            return Journal()
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            os.unlink(path)
        except OSError:
            return Journal()
        return read_journal(text)

    # ---- the run ----------------------------------------------------------------------
    def run(self) -> int:
        os.environ.update(self.connection())
        for signum in (*CANCELING, *PASSED_ON):
            signal.signal(signum, self._on_signal)
        self.courier.note("Queued", time.time())
        self._make_journal()
        read_end, write_end = os.pipe()
        outcome: Outcome | None = None
        try:
            if self._canceled_by is None:
                self._pid = self._spawn(write_end)
        except OSError as exc:
            outcome = not_started(shlex.join(self.request.command), exc)
        finally:
            os.close(write_end)
        relay = threading.Thread(target=self._relay, args=(read_end,), daemon=True)
        relay.start()
        if self._pid is not None:
            self.courier.note("Running", time.time())
            self._take_terminal()
            if self._canceled_by is not None:  # a signal between spawn and now
                self._pass_on(self._canceled_by)
        self.courier.start()
        if self._pid is not None:
            status = self._wait()
            relay.join(_STDERR_EOF_S)
            outcome = ended(status, self.tail.text(), self._canceled_by)
        elif outcome is None:
            number = self._canceled_by or signal.SIGTERM
            message = f"canceled: {signal_name(number)} received before the command started"
            outcome = Outcome(CANCELED, 128 + number, message)
        journal = self._read_journal()
        self.courier.finish(None if journal.ended else outcome, time.time(), journal)
        self._say_end(self.courier.drain(self.request.deliver_s))
        if self.courier.alive:  # stuck in a blocking call of kafka-python: do not wait on it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(outcome.exit_code)
        return outcome.exit_code

    @staticmethod
    def _say_end(report: str | None) -> None:
        for line in (report or "").splitlines():
            print(f"runwatch: {line}", file=sys.stderr, flush=True)

    def _spawn(self, stderr: int) -> int:
        command = self.request.command
        return os.posix_spawnp(
            command[0],
            list(command),
            self.child_environment(),
            file_actions=[(os.POSIX_SPAWN_DUP2, stderr, 2)],
            setpgroup=0,
            setsigdef=_RESTORED,
            setsigmask=(),
        )

    def _relay(self, fd: int) -> None:
        """The command's stderr to exec's, as it comes, and into the tail."""
        passing = True
        try:
            while chunk := os.read(fd, 65536):
                if passing:
                    passing = _write_all(2, chunk)
                self.tail.add(chunk)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _wait(self) -> int:
        """Any child is reaped, not only the command: as a container's PID 1 (a Kubernetes
        Job), exec inherits the command's orphans, which would stay zombies otherwise."""
        pid = self._pid
        assert pid is not None
        while True:
            reaped, status = os.waitpid(-1, os.WUNTRACED)
            if reaped != pid:
                continue
            if os.WIFSTOPPED(status):
                self._stopped()
                continue
            self._done = True
            self._give_terminal_back()
            return status

    # ---- signals ----------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum not in CANCELING:
            self._pass_on(signum)
            return
        if self._canceled_by is not None:  # a second one: no more grace
            self._pass_on(signal.SIGKILL)
            return
        self._canceled_by = signum
        self.courier.note("CancelRequested", time.time())
        if self._pid is not None:
            self._pass_on(signum)

    def _pass_on(self, signum: int) -> None:
        pid = self._pid
        if pid is None or self._done:
            return
        try:
            os.killpg(pid, signum)
            if signum != signal.SIGKILL:
                os.killpg(pid, signal.SIGCONT)  # a stopped command must see it
        except OSError:
            return  # the group is gone
        if signum in CANCELING and self.request.grace_s >= 0:
            timer = threading.Timer(self.request.grace_s, self._pass_on, (signal.SIGKILL,))
            timer.daemon = True
            timer.start()

    # ---- the terminal -----------------------------------------------------------------
    def _take_terminal(self) -> None:
        """Hand the terminal to the command's group when exec holds it (in the foreground)."""
        try:
            if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
                return
        except OSError:
            return
        assert self._pid is not None
        if _set_foreground(0, self._pid):
            self._tty = 0
            with contextlib.suppress(OSError):  # if it read the terminal too early
                os.killpg(self._pid, signal.SIGCONT)

    def _give_terminal_back(self) -> None:
        if self._tty is not None:
            _set_foreground(self._tty, os.getpgrp())
            self._tty = None

    def _stopped(self) -> None:
        """The command stopped (Ctrl-Z, or it read the terminal in the background). At a
        terminal, stop exec too so that the shell sees the job stopped; on `fg`, hand the
        terminal over again, and wake the command."""
        if self._tty is None and not os.isatty(0):
            return  # no job control here: someone stopped it on purpose, wait for it
        tty = 0
        _set_foreground(tty, os.getpgrp())
        self._tty = None
        os.kill(os.getpid(), signal.SIGSTOP)
        # continued: by `fg` (the terminal is ours again) or `bg` (it is not)
        pid = self._pid
        assert pid is not None
        try:
            if os.tcgetpgrp(tty) == os.getpgrp() and _set_foreground(tty, pid):
                self._tty = tty
            os.killpg(pid, signal.SIGCONT)
        except OSError:
            pass


def _set_foreground(fd: int, pgid: int) -> bool:
    """tcsetpgrp, with SIGTTOU blocked (a background process calling it would be stopped)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(fd, pgid)
        return True
    except OSError:
        return False
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _write_all(fd: int, data: bytes) -> bool:
    """False once the descriptor cannot take more (closed, a broken pipe): stop trying."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return False
        view = view[written:]
    return True
