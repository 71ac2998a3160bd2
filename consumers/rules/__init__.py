"""Per-event alert rules: YAML files in a directory, validated whole, evaluated per event.

`load_rules` / `check_rules` read a directory, `RuleSet.evaluate` turns an event into
alerts, `RuleWatcher` keeps the rules in force current while the service runs.
"""

from consumers.rules.engine import RuleSet, event_data
from consumers.rules.loader import check_rules, load_rules, read_rules, rule_files
from consumers.rules.model import Rule, RuleFile, Throttle, When, parse_duration
from consumers.rules.reload import RuleWatcher

__all__ = [
    "Rule",
    "RuleFile",
    "RuleSet",
    "RuleWatcher",
    "Throttle",
    "When",
    "check_rules",
    "event_data",
    "load_rules",
    "parse_duration",
    "read_rules",
    "rule_files",
]
