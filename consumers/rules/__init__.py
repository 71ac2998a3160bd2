"""Per-event alert rules: YAML files in a directory, validated whole, evaluated per event.

`load_rules` / `check_rules` read a directory, `RuleSet.evaluate` turns an event into
alerts (the service's `RuleWatcher`, consumers/service/reload.py, keeps them current).

The names are resolved on first use: importing one module of the package (the rule-file
schema, `consumers.rules.model`) must not load the rules engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumers.rules.engine import RuleSet, event_data
    from consumers.rules.loader import check_rules, load_rules, read_rules, rule_files
    from consumers.rules.model import Rule, RuleFile, Throttle, When

_HOMES = {
    "RuleSet": "engine",
    "event_data": "engine",
    "check_rules": "loader",
    "load_rules": "loader",
    "read_rules": "loader",
    "rule_files": "loader",
    "Rule": "model",
    "RuleFile": "model",
    "Throttle": "model",
    "When": "model",
}

__all__ = [
    "Rule",
    "RuleFile",
    "RuleSet",
    "Throttle",
    "When",
    "check_rules",
    "event_data",
    "load_rules",
    "read_rules",
    "rule_files",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)
