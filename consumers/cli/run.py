"""`runwatch run ...`: the lifecycle API from a shell (start, complete, fail, cancel, update,
list, show), for scripts that are not Python. Registered by `consumers.cli.main.build_parser`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

import orjson

from consumers.cli.options import parse_pairs, say_cut, settings_from_args
from consumers.client import Experiment, Run, Workspace
from consumers.client.workspace import DEFAULT_WORKSPACE
from consumers.model.errors import ConfigError, RunNotFoundError, StoreLagError

Common = Callable[..., None]


def _workspace(args: argparse.Namespace) -> Workspace:
    name = getattr(args, "workspace", None) or DEFAULT_WORKSPACE
    return Workspace(name, settings_from_args(args), consistency_timeout=args.wait)


def _attach(args: argparse.Namespace) -> tuple[Workspace, Run]:
    ws = _workspace(args)
    return ws, Run.attach(ws, args.run_id)


def _settle(run: Run) -> None:
    """Wait (up to --wait) until the store shows what was just published, so the next
    command of a shell script reads it back; publishing succeeded either way."""
    try:
        run.get_status()
    except (StoreLagError, RunNotFoundError) as exc:
        print(f"runwatch: published, but not stored yet: {exc}", file=sys.stderr)


def cmd_start(args: argparse.Namespace) -> int:
    tags = dict(parse_pairs(args.tag, need_value=False))
    properties = {k: v or "" for k, v in parse_pairs(args.property, need_value=True)}
    with _workspace(args) as ws:
        if args.parent:
            parent = Run.attach(ws, args.parent)
            run = parent.child_run(
                args.description, run_id=args.run_id, tags=tags, properties=properties
            )
        else:
            run = Experiment(ws, args.experiment).start_logging(
                run_id=args.run_id, tags=tags, properties=properties, description=args.description
            )
        _settle(run)
        if args.export:
            for key, value in run.environment().items():
                print(f"export {key}={shlex.quote(value)}")
        else:
            print(run.id)
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    ws, run = _attach(args)
    with ws:
        if args.action == "complete":
            run.complete()
        elif args.action == "fail":
            run.fail(args.error, error_code=args.error_code)
        else:
            run.cancel()
        _settle(run)
    done = {"complete": "Completed", "fail": "Failed", "cancel": "Canceled"}[args.action]
    print(f"run {run.id}: {done}", file=sys.stderr)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    tags = dict(parse_pairs(args.add_tag, need_value=False))
    properties = {k: v or "" for k, v in parse_pairs(args.add_property, need_value=True)}
    if not (tags or properties or args.remove_tag or args.description is not None):
        raise ConfigError(
            "", "nothing to update: give --add-tag, --remove-tag, --add-property or --description"
        )
    ws, run = _attach(args)
    with ws:
        run.add_properties(properties)  # first: a conflict must leave everything unchanged
        run.set_tags(tags)
        for key in args.remove_tag or ():
            run.remove_tag(key)
        if args.description is not None:
            run.set_description(args.description)
        _settle(run)
    print(f"run {run.id}: updated", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from consumers.cli.reports import format_runs
    from consumers.store.queries import RunFilter

    try:
        flt = RunFilter(query=args.query)
        statuses = [s for group in args.status or () for s in group.split(",")]
        with _workspace(args) as ws:
            runs = Experiment(ws, args.experiment).get_runs(
                tags=dict(parse_pairs(args.tag, need_value=False)) or None,
                properties=dict(parse_pairs(args.property, need_value=True)) or None,
                status=statuses or None,
                include_children=args.include_children,
            )
            records = [run.get_details() for run in runs]
    except ValueError as exc:  # an unknown status, a bad JMESPath
        raise ConfigError("", str(exc)) from None
    try:
        records = [record for record in records if flt.matches(record)]
    except ValueError as exc:
        raise ConfigError("--query", str(exc)) from None
    print(format_runs(records[: args.limit], args.output))
    say_cut(min(len(records), args.limit), len(records), args.output)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    ws, run = _attach(args)
    with ws:
        if args.output == "table":
            from consumers.cli.reports import format_run_detail
            from consumers.store.queries import get_run

            detail = get_run(ws.store, run.id)
            assert detail is not None  # attach found it
            print(format_run_detail(detail, "table"))
        else:
            details: dict[str, Any] = run.get_details()
            print(orjson.dumps(details, option=orjson.OPT_INDENT_2).decode())
    return 0


def register(sub: Any, common: Common) -> None:
    """Adds `run` and its sub-commands to the `runwatch` parser's sub-parsers."""
    run = sub.add_parser("run", help="start, finish, tag and query runs (the lifecycle API)")
    cmds = run.add_subparsers(dest="run", required=True)

    def add(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        p = cmds.add_parser(name, help=help_text)
        common(p, kafka=True, store=True)
        p.add_argument(
            "--wait",
            type=float,
            default=10.0,
            metavar="S",
            help="how long to wait for the store to show a run or a change (default 10 s)",
        )
        p.set_defaults(func=func, action=name)
        return p

    p = add("start", "start a run (prints its id)", cmd_start)
    p.add_argument("--experiment", required=True)
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--parent", metavar="RUN_ID", help="start a child run of this run")
    p.add_argument("--run-id", help="choose the id (default: generated)")
    p.add_argument("--tag", action="append", metavar="K[=V]")
    p.add_argument("--property", action="append", metavar="K=V")
    p.add_argument("--description")
    p.add_argument(
        "--export",
        action="store_true",
        help="print `export` lines for a child process (Run.get_context())",
    )
    for name, help_text in (
        ("complete", "mark a run Completed"),
        ("fail", "mark a run Failed"),
        ("cancel", "cancel a run (CancelRequested, then Canceled)"),
    ):
        p = add(name, help_text, cmd_finish)
        p.add_argument("run_id")
        if name == "fail":
            p.add_argument("--error", help="the error message")
            p.add_argument("--error-code")
    p = add("update", "change a run's tags, properties or description", cmd_update)
    p.add_argument("run_id")
    p.add_argument("--add-tag", action="append", metavar="K[=V]")
    p.add_argument("--remove-tag", action="append", metavar="K")
    p.add_argument("--add-property", action="append", metavar="K=V", help="write-once")
    p.add_argument("--description")
    p = add("list", "an experiment's runs, newest first", cmd_list)
    p.add_argument("--experiment", required=True)
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    p.add_argument("--status", action="append", help="status (repeat or comma-separate)")
    p.add_argument("--tag", action="append", metavar="K[=V]")
    p.add_argument("--property", action="append", metavar="K=V")
    p.add_argument("--query", metavar="JMESPATH", help="e.g. \"[?tags.quality=='fantastic run']\"")
    p.add_argument("--include-children", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p = add("show", "one run's details (JSON, or the timeline with -o table)", cmd_show)
    p.add_argument("run_id")
    p.add_argument("--output", "-o", choices=["table", "json"], default="json")

    from consumers.cli.run_exec import register as register_exec  # exec, wait, flush

    register_exec(cmds, add)
