"""What every `runwatch` sub-command does with its shared flags: the settings with the
--bootstrap/--topic/--store overrides applied, `k=v` pairs, and the note under a table cut
by --limit. Its own module so that the sub-command modules (`main`, `run`) import it rather
than each other."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from consumers.config.settings import Settings, load_settings
from consumers.model.errors import ConfigError


def settings_from_args(args: argparse.Namespace) -> Settings:
    """--config (or the environment), then the connection flags, which win over both. The
    configured secrets are registered with the redaction helper, so whatever a command
    prints masks them."""
    settings = _with_flags(load_settings(args.config), args)
    settings.secret_values(strict=False)
    return settings


def _with_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, object]] = {}
    if getattr(args, "bootstrap", None):
        overrides.setdefault("kafka", {})["bootstrap_servers"] = args.bootstrap
    if getattr(args, "topic", None):
        overrides.setdefault("kafka", {})["topic"] = args.topic
    if getattr(args, "store", None):
        overrides.setdefault("store", {})["url"] = args.store
    if not overrides:
        return settings
    # Validate the overridden sections on their own: going through Settings() again would
    # let the RUNWATCH_* environment win over the flags.
    updates: dict[str, object] = {}
    for section, values in overrides.items():
        current = getattr(settings, section)
        try:
            updates[section] = current.model_validate(current.model_dump() | values)
        except ValidationError as exc:
            key = ".".join(map(str, (section, *exc.errors()[0]["loc"])))
            raise ConfigError(key, str(exc)) from None
    return settings.model_copy(update=updates)


def parse_pairs(
    items: Sequence[str] | None, *, need_value: bool
) -> tuple[tuple[str, str | None], ...]:
    """`--tag k=v --tag k` -> (("k", "v"), ("k", None)); `need_value` refuses a bare key."""
    out: list[tuple[str, str | None]] = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not key or (need_value and not sep):
            raise ConfigError("", f"expected k{'=v' if need_value else '[=v]'}, got {item!r}")
        out.append((key, value if sep else None))
    return tuple(out)


def say_cut(shown: int, total: int, output: str) -> None:
    """Under a table cut by --limit, say so (on stderr for JSON, which stays parseable)."""
    from consumers.cli.reports import cut_note

    note = cut_note(shown, total)
    if note is not None:
        print(note, file=sys.stderr if output == "json" else sys.stdout)
