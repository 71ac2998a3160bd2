"""`runwatch run exec | wait | flush`: a command as a run, waiting for a run's end, and sending
what exec left in the local spool. Registered by `consumers.cli.run.register`.

`runwatch run exec` itself normally never comes here: consumers.entry sends it straight to
its light front (consumers.client.launch); the parser below is for `runwatch run --help` and
for callers of `consumers.cli.main.main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from consumers.cli.options import settings_from_args
from consumers.client.launch import add_arguments, request_from, run_request
from consumers.client.spool import destinations, leftovers, spool_root
from consumers.client.wait import (
    EXIT_CODES,
    TIMEOUT_EXIT,
    WaitTimeoutError,
    status_line,
    wait_until_ended,
)
from consumers.client.workspace import DEFAULT_WORKSPACE, Workspace

Add = Callable[[str, str, Callable[[argparse.Namespace], int]], Any]


def cmd_exec(args: argparse.Namespace) -> int:
    return run_request(request_from(args, os.environ))


def cmd_wait(args: argparse.Namespace) -> int:
    """Exit 0 Completed, 1 Failed, 2 Canceled, 124 when --timeout runs out first."""

    def show(stored: Any) -> None:
        if not args.quiet:
            print(status_line(stored), file=sys.stderr, flush=True)

    settings = settings_from_args(args)
    with Workspace(DEFAULT_WORKSPACE, settings, consistency_timeout=args.wait) as ws:
        try:
            stored = wait_until_ended(ws, args.run_id, args.timeout, show)
        except WaitTimeoutError as exc:
            print(f"runwatch: {exc}", file=sys.stderr)
            return TIMEOUT_EXIT
    return EXIT_CODES[stored.record["status"]]


def cmd_flush(args: argparse.Namespace) -> int:
    """Exit 0 once the spool is empty, 3 while the broker of some of it does not answer."""
    from consumers.client.courier import close, connect, flush_leftovers

    settings = settings_from_args(args)
    root = spool_root(args.spool, os.environ)
    sent = files = left = 0
    for destination in destinations(root):
        kafka = settings.kafka.model_copy(
            update={"bootstrap_servers": destination.bootstrap_servers, "topic": destination.topic}
        )
        claimed = list(leftovers(root, destination))
        if not claimed:
            continue
        try:
            producer = connect(kafka, 10.0)
        except Exception as exc:
            waiting = sum(len(item.records) for item in claimed)
            for item in claimed:
                item.release()
            print(
                f"runwatch: {destination.bootstrap_servers} ({destination.topic}) does not "
                f"answer ({exc}); {waiting} record(s) stay in the spool",
                file=sys.stderr,
            )
            left += waiting
            continue
        try:
            flushed = flush_leftovers(producer, claimed)
        finally:
            close(producer)
        sent, files, left = sent + flushed.records, files + flushed.files, left + flushed.left
    print(f"sent {sent} record(s) from {files} spool file(s) in {root}; {left} left")
    return 0 if left == 0 else 3


def register(cmds: Any, add: Add) -> None:
    """The three commands, on `runwatch run`'s sub-parsers (`add`: cli.run's, which gives a
    command the connection flags and --wait)."""
    p = cmds.add_parser(
        "exec",
        help="run a command as a run (its exit code is the command's)",
        description="Queued, then Running as the command starts, then Completed, Failed "
        "(exit code or signal, and the end of stderr) or Canceled (SIGINT/SIGTERM to exec).",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_exec)
    p = add(
        "wait",
        "wait until a run ends (exit 0 Completed, 1 Failed, 2 Canceled, 124 timeout)",
        cmd_wait,
    )
    p.add_argument("run_id")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print status changes")
    p = add("flush", "send the statuses `run exec` could not deliver (the local spool)", cmd_flush)
    p.add_argument("--spool", metavar="DIR", help="default: $RUNWATCH_SPOOL_DIR or XDG state")
