"""`runwatch` command line. Each sub-command is a thin shell over one module; exit codes:
0 ok, 1 bad input or config (the message names it), 2 usage, 3 infrastructure unreachable."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import orjson
from pydantic import ValidationError

from consumers.cli.console import guarded_output
from consumers.cli.options import parse_pairs, say_cut, settings_from_args
from consumers.config.settings import Settings, load_settings, shipped
from consumers.ingest.decoding import EventFormat
from consumers.model.errors import ConfigError, RunwatchError
from consumers.model.events import RunStatusEvent, parse_status
from consumers.model.notifications import NotificationState
from consumers.model.receivers import OWNER
from consumers.model.redact import redact

if TYPE_CHECKING:
    from consumers.store import Store

log = logging.getLogger("runwatch")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `6h`, `7d` ago, or an ISO-8601 time (naive means UTC)."""
    now = now or datetime.now(UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError("--since", f"expected 30m/6h/7d or an ISO time, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_serve(args: argparse.Namespace) -> int:
    from consumers.service.app import Service, tune_interpreter
    from consumers.telemetry.logs import setup_logging

    settings = settings_from_args(args)
    setup_logging(settings.logging)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: finishing the batch in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = Service(settings)
    service.rules.install_sighup()  # `kill -HUP` reloads the rule files
    tune_interpreter()
    service.run(stop)
    return 0


def _event_from_flags(args: argparse.Namespace) -> RunStatusEvent:
    fields: dict[str, object] = {
        "TimeGenerated": args.time or datetime.now(UTC),
        "RunId": args.run_id,
        "Status": parse_status(args.status),
        "ExperimentName": args.experiment,
        "WorkspaceName": args.workspace,
        "ParentRunId": args.parent,
        "RootRunId": args.root,
        "Message": args.message,
        "RunType": args.run_type,
        "TriggeringUserName": args.user,
        "Tags": dict(parse_pairs(args.tag, need_value=False)),
        "Properties": dict(parse_pairs(args.property, need_value=True)),
    }
    if fields["Status"] == "Failed":
        fields["Level"] = "Error"
    return RunStatusEvent.model_validate({k: v for k, v in fields.items() if v is not None})


def cmd_emit(args: argparse.Namespace) -> int:
    from consumers.ingest.producer import EventPublisher

    settings = settings_from_args(args)
    if args.run_id:
        if not args.status:
            raise ConfigError("--status", "required with --run-id")
        try:
            events = [_event_from_flags(args)]
        except ValueError as exc:  # an unknown --status, or a value the event model refuses
            raise ConfigError("", str(exc)) from None
    else:
        events = []
        for number, line in enumerate(sys.stdin.buffer, 1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
                if isinstance(data, dict):
                    data.setdefault("TimeGenerated", datetime.now(UTC).isoformat())
                events.append(RunStatusEvent.model_validate(data))
            except (orjson.JSONDecodeError, ValidationError) as exc:
                raise ConfigError(f"stdin line {number}", str(exc)) from None
        if not events:
            raise ConfigError("stdin", "no event given: use --run-id/--status or JSON lines")
    with EventPublisher(settings.kafka) as publisher:
        for event in events:
            publisher.publish(event, EventFormat(args.format))
    print(f"published {len(events)} event(s) to {settings.kafka.topic}", file=sys.stderr)
    return 0


def _store(args: argparse.Namespace) -> Store:
    from consumers.store import open_store

    return open_store(settings_from_args(args).store.url)


def cmd_runs_list(args: argparse.Namespace) -> int:
    from consumers.cli.reports import format_runs
    from consumers.store.queries import RunFilter, count_runs, list_runs

    store = _store(args)
    try:
        flt = RunFilter(
            experiment=args.experiment,
            statuses=tuple(s for group in args.status or () for s in group.split(",")),
            since=parse_since(args.since) if args.since else None,
            tags=parse_pairs(args.tag, need_value=False),
            properties=tuple((k, v or "") for k, v in parse_pairs(args.property, need_value=True)),
            query=args.query,
            limit=args.limit,
            cause=args.cause,
        )
        records = list_runs(store, flt)
        total = count_runs(store, flt) if len(records) >= flt.limit else len(records)
    except ValueError as exc:
        raise ConfigError("", str(exc)) from None
    finally:
        store.dispose()
    print(format_runs(records, args.output))
    say_cut(len(records), total, args.output)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from consumers.cli.reports import format_run_detail
    from consumers.store.queries import get_run

    store = _store(args)
    try:
        detail = get_run(store, args.run_id)
    finally:
        store.dispose()
    if detail is None:
        print(f"run {args.run_id!r} is not in the store", file=sys.stderr)
        return 1
    print(format_run_detail(detail, args.output))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from consumers.cli.reports import format_dead_letters
    from consumers.store.queries import count_dead_letters, list_dead_letters

    store = _store(args)
    try:
        rows = list_dead_letters(store, limit=args.limit, reason=args.reason)
        full = len(rows) >= args.limit
        total = count_dead_letters(store, reason=args.reason) if full else len(rows)
    finally:
        store.dispose()
    print(format_dead_letters(rows, args.output))
    say_cut(len(rows), total, args.output)
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    """The rule files and the cause table the service would load with them: the shipped
    causes.yaml and the user's beside their rules (or the causes.yaml given)."""
    from consumers.model.causes import TABLE_FILE, CauseTable, read_causes, table_files
    from consumers.rules.loader import check_rules

    settings = load_settings(args.config) if args.config else None
    directory = args.dir or (settings.rules_dir if settings else Settings().rules_dir)
    receivers = {*settings.receivers, OWNER} if settings else None  # owner: noise.owners
    only_causes = directory.is_file() and directory.name == TABLE_FILE
    errors = [] if only_causes else check_rules(directory, receivers=receivers)
    where = directory.parent if directory.is_file() else directory
    files = table_files(shipped("alert_rules"), where)
    causes, cause_errors = read_causes(*files)
    errors += cause_errors
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        return 1
    from consumers.rules.loader import load_rules

    if not only_causes:
        ruleset = load_rules(directory, receivers=receivers)
        print(f"{directory}: {len(ruleset.rules)} rule(s) OK")
    table = CauseTable.of(causes)
    names = " + ".join(str(f) for f in reversed(files) if f is not None)
    print(f"{names}: {len(table.causes)} failure cause(s) OK")
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    from consumers.cli.dryrun import dry_run, render
    from consumers.rules.loader import read_rules

    settings = settings_from_args(args)
    configured = set(settings.receivers) if args.config else None
    rules, errors = read_rules(args.file)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        return 1
    now = datetime.now(UTC)
    since = parse_since(args.since, now)
    store = _store(args)
    try:
        result = dry_run(
            store,
            rules,
            since=since,
            until=now,
            receivers=configured,
            resolved_receivers={n for n, r in settings.receivers.items() if r.send_resolved},
        )
    finally:
        store.dispose()
    if args.output == "json":
        document = {
            "since": since.isoformat(),
            "until": now.isoformat(),
            "events": result.events,
            "alerts": [a.as_json() for a in result.alerts],
            "notifications": result.sent,
            "throttled": result.throttled,
            "rule_errors": result.rule_errors,
        }
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(result))
    return 0


def cmd_notifications_list(args: argparse.Namespace) -> int:
    from consumers.cli.reports import format_notifications
    from consumers.store.outbox import Outbox

    store = _store(args)
    try:
        outbox = Outbox(store)
        rows = outbox.list(state=args.state, limit=args.limit)
        total = outbox.count(state=args.state) if len(rows) >= args.limit else len(rows)
    finally:
        store.dispose()
    print(format_notifications(rows, args.output))
    say_cut(len(rows), total, args.output)
    return 0


def cmd_notifications_retry(args: argparse.Namespace) -> int:
    from consumers.store.outbox import Outbox

    store = _store(args)
    try:
        done = Outbox(store).retry(args.id, datetime.now(UTC))
    finally:
        store.dispose()
    if not done:
        print(f"no dead or pending notification {args.id!r}", file=sys.stderr)
        return 1
    print(f"notification {args.id} is due again; a running `runwatch serve` sends it")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    settings.secret_values()  # every secret file readable, and private
    settings.kafka.client_options()  # SASL completeness
    store = redact(settings.store.url)  # never the password, also from RUNWATCH_STORE__URL
    print(f"{args.file}: OK (kafka {settings.kafka.bootstrap_servers}, store {store})")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from consumers.store.migrate import open_store, revision

    settings = settings_from_args(args).store
    store = open_store(settings.url, migrate=True)
    try:
        created = store.ensure_partitions(
            datetime.now(UTC),
            interval_hours=settings.partition_interval_hours,
            ahead=settings.partitions_ahead,
        )
        print(f"{store.url}: schema at {revision(store)}")
        if created:
            print(f"created partitions: {', '.join(created)}")
    finally:
        store.dispose()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from consumers.demo.simulator import Simulator
    from consumers.ingest.producer import EventPublisher

    settings = settings_from_args(args)
    simulator = Simulator(seed=args.seed)
    fmt = EventFormat(args.format)
    with EventPublisher(settings.kafka) as publisher:
        if args.events:
            start = datetime.now(UTC) - timedelta(seconds=args.events / 10)
            for event in simulator.events(args.events, start=start):
                publisher.publish(event, fmt)
            print(f"published {args.events} simulated events", file=sys.stderr)
            return 0
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        simulator.run_live(
            lambda e: publisher.publish(e, fmt), stop, pipelines_per_minute=args.rate
        )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from consumers.cli.up import run_demo

    return run_demo(args)


def _common(parser: argparse.ArgumentParser, *, kafka: bool = False, store: bool = False) -> None:
    parser.add_argument("--config", "-c", type=Path, help="YAML config file")
    if kafka:
        parser.add_argument("--bootstrap", help="override kafka.bootstrap_servers")
        parser.add_argument("--topic", help="override kafka.topic")
    if store:
        parser.add_argument("--store", help="override store.url")


def build_parser(*, serving: bool = False) -> argparse.ArgumentParser:
    """`serving`: for `runwatch serve ...`, which leaves out the `silence` and `run` trees
    (the run lifecycle client and its modules, ~0.7 MB a long-running service would hold for
    nothing); everything else parses the same."""
    parser = argparse.ArgumentParser(prog="runwatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="consume run events into the store; expose metrics")
    _common(p, kafka=True, store=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="the demo: bundled broker, SQLite, simulated runs")
    p.add_argument("--dir", type=Path, default=Path(".runwatch-demo"), help="demo state folder")
    p.add_argument("--rate", type=float, default=30.0, help="pipelines per minute")
    p.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("emit", help="publish one event from flags, or JSON lines from stdin")
    _common(p, kafka=True)
    p.add_argument("--run-id")
    p.add_argument("--status")
    p.add_argument("--experiment")
    p.add_argument("--workspace")
    p.add_argument("--parent")
    p.add_argument("--root")
    p.add_argument("--message")
    p.add_argument("--run-type")
    p.add_argument("--user")
    p.add_argument("--time", type=datetime.fromisoformat)
    p.add_argument("--tag", action="append", metavar="K[=V]")
    p.add_argument("--property", action="append", metavar="K=V")
    p.add_argument("--format", choices=[f.value for f in EventFormat], default="native")
    p.set_defaults(func=cmd_emit)

    p = sub.add_parser("simulate", help="publish simulated pipelines")
    _common(p, kafka=True)
    p.add_argument("--events", type=int, default=0, help="publish N events at once and exit")
    p.add_argument("--rate", type=float, default=30.0, help="live: pipelines per minute")
    p.add_argument("--format", choices=[f.value for f in EventFormat], default="native")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_simulate)

    runs = sub.add_parser("runs", help="query runs").add_subparsers(dest="runs", required=True)
    p = runs.add_parser("list", help="runs, newest first")
    _common(p, store=True)
    p.add_argument("--experiment", help="name or glob")
    p.add_argument("--status", action="append", help="status (repeat or comma-separate)")
    p.add_argument("--since", help="30m, 6h, 7d or an ISO time")
    p.add_argument("--tag", action="append", metavar="K[=V]")
    p.add_argument("--property", action="append", metavar="K=V")
    p.add_argument("--query", metavar="JMESPATH", help="e.g. \"[?tags.team=='nlp']\"")
    p.add_argument(
        "--cause", help="a failed run's cause, or a word of one: oom (cuda_oom, host_oom)"
    )
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("show", help="one run: timeline and children")
    _common(p, store=True)
    p.add_argument("run_id")
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_runs_show)

    dead = sub.add_parser("dead-letters", help="messages that were not run events")
    dead_sub = dead.add_subparsers(dest="dead", required=True)
    p = dead_sub.add_parser("list")
    _common(p, store=True)
    p.add_argument("--reason")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_dead_letters)

    rules = sub.add_parser("rules", help="alert rules").add_subparsers(dest="rules", required=True)
    p = rules.add_parser("check", help="validate rule files (exit 1 naming file and line)")
    p.add_argument("dir", type=Path, nargs="?", help="default: rules_dir of --config")
    p.add_argument("--config", "-c", type=Path, help="also check receivers against it")
    p.set_defaults(func=cmd_rules_check)

    p = rules.add_parser("test", help="replay stored history through rules; send nothing")
    _common(p, store=True)
    p.add_argument("file", type=Path, help="a rule file or a directory of them")
    p.add_argument("--since", default="7d", help="30m, 6h, 7d or an ISO time (default 7d)")
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_rules_test)

    notes = sub.add_parser("notifications", help="the outbox")
    notes_sub = notes.add_subparsers(dest="notes", required=True)
    p = notes_sub.add_parser("list")
    _common(p, store=True)
    p.add_argument(
        "--state",
        choices=[state.value for state in NotificationState],
    )
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_notifications_list)
    p = notes_sub.add_parser("retry", help="send a dead notification again")
    _common(p, store=True)
    p.add_argument("id")
    p.set_defaults(func=cmd_notifications_retry)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="cfg", required=True
    )
    p = config.add_parser("check", help="validate a config file (exit 1 naming the bad key)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_config_check)

    if not serving:
        from consumers.cli.silence import register as register_silence

        register_silence(sub, lambda p: _common(p, store=True), _store)

    db = sub.add_parser("db", help="store schema").add_subparsers(dest="db", required=True)
    p = db.add_parser("upgrade", help="apply migrations")
    _common(p, store=True)
    p.set_defaults(func=cmd_db_upgrade)

    if not serving:
        from consumers.cli.run import register  # `runwatch run ...`: the lifecycle API

        register(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Everything a command prints (and its log lines) goes through consumers.cli.console: no
    control sequence from a run id reaches the terminal, no credential the screen."""
    with guarded_output():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(serving=words[:1] == ["serve"]).parse_args(words)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"runwatch: {exc}", file=sys.stderr)
        return 1
    except RunwatchError as exc:
        print(f"runwatch: {exc}", file=sys.stderr)
        return 3 if exc.retriable else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
