"""`runwatch run exec [options] -- CMD ...`: the front, which must start the command within
milliseconds. It parses the flags, names the run and hands over to the supervisor; nothing
here imports pydantic, the settings, kafka-python or SQLAlchemy (the supervisor's courier
does, on its own thread, once the command runs). `consumers.entry` sends `runwatch run exec`
straight here, before the rest of the command line is imported.

Also `python -m consumers.client.launch [options] -- CMD ...`, which is how
`Experiment.submit` and `Run.submit_child` start a command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from consumers.client.env import (
    ENV_EXPERIMENT,
    ENV_ROOT,
    ENV_RUN_ID,
    ENV_WORKSPACE,
    new_child_id,
    new_run_id,
)
from consumers.client.request import DEFAULT_WORKSPACE, ExecRequest
from consumers.client.spool import spool_root
from consumers.model.errors import ConfigError

HEARTBEAT_S = 30.0
GRACE_S = 10.0
DELIVER_S = 10.0
USAGE_EXIT = 2  # exec's own flags are wrong: the command did not run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """exec's flags, for this front and for the `runwatch` parser's help alike."""
    parser.add_argument("--experiment", help="the run's experiment (default: the parent's)")
    parser.add_argument("--workspace", help=f"default: the parent's, else {DEFAULT_WORKSPACE}")
    parser.add_argument("--name", help="the run's description")
    parser.add_argument("--tag", action="append", metavar="K[=V]")
    parser.add_argument("--property", action="append", metavar="K=V")
    parser.add_argument("--parent", metavar="RUN_ID", help="run the command as a child run")
    parser.add_argument(
        "--root", metavar="RUN_ID", help="the parent's root run (default: read from the store)"
    )
    parser.add_argument("--run-id", help="choose the id (default: generated)")
    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument("--bootstrap", help="override kafka.bootstrap_servers")
    parser.add_argument("--topic", help="override kafka.topic")
    parser.add_argument("--store", help="override store.url")
    parser.add_argument(
        "--spool", metavar="DIR", help="where undelivered statuses wait (consumers/client/spool)"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT_S,
        metavar="S",
        help=f"seconds between heartbeats while the command runs; 0: none ({HEARTBEAT_S:g})",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=GRACE_S,
        metavar="S",
        help=f"after passing SIGINT/SIGTERM on, SIGKILL after this long ({GRACE_S:g})",
    )
    parser.add_argument(
        "--deliver-timeout",
        type=float,
        default=DELIVER_S,
        metavar="S",
        help=f"how long exec waits for the broker after the command ended ({DELIVER_S:g})",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")


def _pairs(items: Sequence[str] | None, *, need_value: bool) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not key or (need_value and not sep):
            raise ConfigError("", f"expected k{'=v' if need_value else '[=v]'}, got {item!r}")
        out.append((key, value if sep else None))
    return out


def request_from(args: argparse.Namespace, environ: Mapping[str, str]) -> ExecRequest:
    command = list(args.command or ())
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("", "no command: runwatch run exec [options] -- CMD [ARG ...]")
    parent = args.parent or None
    in_parent = parent is not None and parent == environ.get(ENV_RUN_ID)
    experiment = args.experiment or (environ.get(ENV_EXPERIMENT) if in_parent else None)
    if experiment is None and parent is None:
        raise ConfigError("--experiment", "required (or --parent RUN_ID: the parent's)")
    # With a parent found in the store, its workspace (the courier reads it).
    workspace = args.workspace or (environ.get(ENV_WORKSPACE) if in_parent else None)
    root = args.root or ((environ.get(ENV_ROOT) or parent) if in_parent else None)
    if root is not None and parent is None:
        raise ConfigError("--root", "only with --parent")
    for flag, value in (("--heartbeat", args.heartbeat), ("--grace", args.grace)):
        if value < 0:
            raise ConfigError(flag, f"must not be negative, got {value:g}")
    if args.deliver_timeout < 0:
        raise ConfigError("--deliver-timeout", "must not be negative")
    if args.run_id:
        run_id = args.run_id
    elif parent is not None:
        run_id = new_child_id(parent)
    else:
        assert experiment is not None
        run_id = new_run_id(experiment)
    return ExecRequest(
        command=tuple(command),
        run_id=run_id,
        experiment=experiment,
        workspace=workspace or (None if parent else DEFAULT_WORKSPACE),
        parent=parent,
        root=root,
        name=args.name,
        tags=tuple(_pairs(args.tag, need_value=False)),
        properties=tuple((k, v or "") for k, v in _pairs(args.property, need_value=True)),
        config=os.path.abspath(args.config) if args.config else None,
        bootstrap=args.bootstrap,
        topic=args.topic,
        store=args.store,
        spool=spool_root(args.spool, environ),
        heartbeat_s=args.heartbeat,
        grace_s=args.grace,
        deliver_s=args.deliver_timeout,
    )


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(
        prog="runwatch run exec",
        description="Run a command as a run: Queued, Running, then Completed, Failed or "
        "Canceled as it ends; its exit code is the command's.",
    )
    add_arguments(made)
    return made


def run_request(request: ExecRequest) -> int:
    from consumers.client.supervisor import Supervisor

    return Supervisor(request).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        request = request_from(args, os.environ)
    except ConfigError as exc:
        print(f"runwatch: {exc}", file=sys.stderr)
        return USAGE_EXIT
    return run_request(request)


if __name__ == "__main__":
    sys.exit(main())
