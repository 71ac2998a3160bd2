"""`runwatch silence add|list|expire`: silences live in the store, so a running service
honours a new one from its next batch, on every replica."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from consumers.cli.reports import table
from consumers.model.durations import parse_duration
from consumers.store.silences import add_silence, expire_silence, list_silences

if TYPE_CHECKING:
    from consumers.store import Store

StoreOpener = Callable[[argparse.Namespace], "Store"]


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def cmd_add(args: argparse.Namespace, open_store: StoreOpener) -> int:
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        print(f"runwatch: --for: {exc}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    starts = None
    if args.start:
        try:
            starts = datetime.fromisoformat(args.start)
        except ValueError:
            print(f"runwatch: --start: expected an ISO time, got {args.start!r}", file=sys.stderr)
            return 1
        if starts.tzinfo is None:
            starts = starts.replace(tzinfo=UTC)
    store = open_store(args)
    try:
        silence = add_silence(
            store,
            args.match or [],
            duration_s=duration,
            comment=args.comment,
            now=now,
            created_by=args.author,
            starts_at=starts,
        )
    except ValueError as exc:
        print(f"runwatch: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(
        f"silence {silence.id}: {' '.join(silence.matchers)} "
        f"from {_when(silence.starts_at)} until {_when(silence.ends_at)}"
    )
    return 0


def cmd_list(args: argparse.Namespace, open_store: StoreOpener) -> int:
    now = datetime.now(UTC)
    store = open_store(args)
    try:
        rows = list_silences(store, now, include_expired=args.all)
    finally:
        store.dispose()
    if args.output == "json":
        data = [{**dataclasses.asdict(row), "active": row.active(now)} for row in rows]
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not rows:
        print("No silences." if args.all else "No active silences.")
        return 0
    header = ("ID", "STATE", "ENDS", "SILENCED", "BY", "MATCHERS / COMMENT")
    cells = (
        (
            row.id,
            "active" if row.active(now) else ("pending" if row.starts_at > now else "expired"),
            _when(row.ends_at),
            row.silenced,
            row.created_by,
            f"{' '.join(row.matchers)}  # {row.comment}",
        )
        for row in rows
    )
    print(table(header, cells))  # every cell cleaned: no control sequence reaches the terminal
    return 0


def cmd_expire(args: argparse.Namespace, open_store: StoreOpener) -> int:
    store = open_store(args)
    try:
        done = expire_silence(store, args.id, datetime.now(UTC))
    finally:
        store.dispose()
    if not done:
        print(f"runwatch: no active silence {args.id!r}", file=sys.stderr)
        return 1
    print(f"silence {args.id} expired")
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
    open_store: StoreOpener,
) -> None:
    silence = sub.add_parser("silence", help="silences: matching alerts are recorded, not sent")
    silence_sub = silence.add_subparsers(dest="silence", required=True)
    p = silence_sub.add_parser("add", help="silence alerts matching every --match")
    p.add_argument(
        "--match",
        "-m",
        action="append",
        metavar="LABEL=VALUE",
        help="label matcher: k=v, k!=v, k=~regex, k!~regex (repeatable; all must match)",
    )
    p.add_argument("--for", dest="duration", required=True, help='how long, e.g. "2h", "30m"')
    p.add_argument("--comment", required=True, help="why (shown in `silence list`)")
    p.add_argument("--author", help="who (default: the OS user)")
    p.add_argument("--start", help="ISO time the silence starts (default: now)")
    common(p)
    p.set_defaults(func=lambda args: cmd_add(args, open_store))
    p = silence_sub.add_parser("list", help="active silences and how much each silenced")
    p.add_argument("--all", action="store_true", help="include expired silences")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    common(p)
    p.set_defaults(func=lambda args: cmd_list(args, open_store))
    p = silence_sub.add_parser("expire", help="end a silence now")
    p.add_argument("id")
    common(p)
    p.set_defaults(func=lambda args: cmd_expire(args, open_store))
