"""How a supervised command ended, as a run's end: status, Message, error code, and the exit
code `runwatch run exec` passes on. Pure: the supervisor gives the wait status and what it saw.

- exit 0: Completed;
- a non-zero exit or a signal: Failed, the Message saying which (`exit code 3`, `killed by
  SIGKILL`) followed by the end of stderr (consumers.client.tail), the error code the
  exception's name when stderr ends with a Python traceback, else `exit 3` / `SIGKILL`;
- `exec` itself got SIGINT/SIGTERM (and passed it on), or the command died of SIGINT (Ctrl-C
  at a terminal reaches the command directly): Canceled.
The exit code is the command's, 128 + the signal number when a signal ended it (as shells do).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from consumers.client.tail import exception_name, failure_text

COMPLETED, FAILED, CANCELED = "Completed", "Failed", "Canceled"
NOT_FOUND_EXIT, NOT_EXECUTABLE_EXIT = 127, 126  # a command that cannot start, as in shells


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    exit_code: int
    message: str | None = None
    error_code: str | None = None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ended(wait_status: int, stderr_tail: str, canceled_by: int | None = None) -> Outcome:
    """The run's end for a command that ran; `canceled_by` is the signal `exec` received."""
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        exit_code, how, code = 128 + number, f"killed by {signal_name(number)}", signal_name(number)
        if canceled_by is None and number == signal.SIGINT:
            canceled_by = number
    else:
        exit_code = os.waitstatus_to_exitcode(wait_status)
        how, code = f"exit code {exit_code}", f"exit {exit_code}"
    if canceled_by is not None:
        message = f"canceled: {signal_name(canceled_by)} received; the command ended, {how}"
        return Outcome(CANCELED, exit_code, message)
    if exit_code == 0:
        return Outcome(COMPLETED, 0)
    tail = failure_text(stderr_tail)
    message = f"{how}\n{tail}" if tail else how
    return Outcome(FAILED, exit_code, message, exception_name(stderr_tail) or code)


def not_started(command: str, error: OSError) -> Outcome:
    """The command could not be started at all (not found, not executable)."""
    missing = isinstance(error, FileNotFoundError)
    exit_code = NOT_FOUND_EXIT if missing else NOT_EXECUTABLE_EXIT
    what = "command not found" if missing else f"cannot run the command ({error.strerror})"
    return Outcome(FAILED, exit_code, f"{what}: {command}", f"exit {exit_code}")
