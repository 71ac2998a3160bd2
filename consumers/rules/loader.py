"""Reading a rules directory: every `*.yaml` / `*.yml` file, sorted, several rules per file.

Each problem becomes a `RuleError` naming the file, the line, the rule and the field, and
`check_rules` reports all of them at once, so that fixing a directory takes one round trip.
Rules are validated one by one: a bad rule does not hide the duplicate name of its neighbour.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from consumers.model.causes import TABLE_FILE
from consumers.model.errors import RuleError
from consumers.model.yamlpos import YamlSyntaxError, line_of, locate, node_at, parse
from consumers.rules.engine import RuleSet
from consumers.rules.model import (
    AbsenceSpec,
    DurationSpec,
    FlatlineSpec,
    Rule,
    ThresholdSpec,
    Throttle,
    TreeSpec,
    When,
)

RULE_SUFFIXES = (".yaml", ".yml")
# Which model an unknown key was found in, by the dotted path of its parent.
_MODELS: dict[str, type[BaseModel]] = {
    "": Rule,
    "when": When,
    "throttle": Throttle,
    "threshold": ThresholdSpec,
    "threshold.of": When,
    "absence": AbsenceSpec,
    "flatline": FlatlineSpec,
    "duration": DurationSpec,
    "tree": TreeSpec,
}


def rule_files(directory: Path) -> list[Path]:
    """Hidden files are skipped: editors park swap and lock files beside the real ones. So is
    the cause table (`causes.yaml`, consumers/model/causes.py), which lives beside the rules."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in RULE_SUFFIXES
        and not p.name.startswith(".")
        and p.name != TABLE_FILE
        and p.is_file()
    )


def load_rules(directory: Path, *, receivers: Collection[str] | None = None) -> RuleSet:
    """All rules of `directory`, or the first error (`check_rules` lists them all).
    `receivers`, when given, are the receiver names that `notify` may use."""
    rules, errors = read_rules(directory, receivers)
    if errors:
        raise errors[0]
    return RuleSet(rules)


def check_rules(directory: Path, receivers: Collection[str] | None = None) -> list[RuleError]:
    """Every error across every file of `directory`; empty when it would load."""
    return read_rules(directory, receivers)[1]


def read_rules(
    directory: Path, receivers: Collection[str] | None = None
) -> tuple[list[Rule], list[RuleError]]:
    """The valid rules and all errors: what a reloader needs to validate, then swap."""
    directory = Path(directory)
    try:
        files = [directory] if directory.is_file() else rule_files(directory)
    except OSError as exc:
        return [], [RuleError(str(directory), None, None, None, f"cannot list: {exc.strerror}")]
    rules: list[Rule] = []
    errors: list[RuleError] = []
    first_seen: dict[str, tuple[Path, int | None]] = {}
    for path in files:
        file_errors: list[RuleError] = []
        for index, name, rule, root in _load_file(path, file_errors):
            # Invalid rules take part too: every error in one round trip.
            line = locate(root, ("rules", index, "name"))
            if name in first_seen:
                first_path, first_line = first_seen[name]
                where = f"{first_path}:{first_line}" if first_line else str(first_path)
                file_errors.append(
                    RuleError(
                        str(path), line, name, "name", f"duplicate rule name (first at {where})"
                    )
                )
                continue
            first_seen[name] = (path, line)
            if rule is None:
                continue
            if receivers is not None:
                file_errors.extend(_check_receivers(path, root, index, rule, receivers))
            rules.append(rule)
        errors.extend(sorted(file_errors, key=lambda e: e.line or 0))
    return rules, errors


_Entry = tuple[int, str, Rule | None, yaml.Node]


def _load_file(path: Path, errors: list[RuleError]) -> list[_Entry]:
    """(index, name, rule or None if invalid, node tree) for each rule of one file that has a
    name; problems are appended to `errors`."""
    file = str(path)
    try:
        root, data, duplicates = parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        errors.append(RuleError(file, None, None, None, f"cannot read: {exc.strerror}"))
        return []
    except UnicodeDecodeError:
        errors.append(RuleError(file, None, None, None, "not UTF-8 text"))
        return []
    except YamlSyntaxError as exc:
        errors.append(RuleError(file, exc.line, None, None, f"not valid YAML: {exc}"))
        return []
    for line, key in duplicates:
        errors.append(RuleError(file, line, _rule_at(root, data, line), key, "key given twice"))
    if root is None:
        errors.append(RuleError(file, None, None, None, "empty; expected a 'rules' list"))
        return []
    if not isinstance(data, dict):
        errors.append(
            RuleError(
                file, line_of(root), None, None, "the top level must be a mapping with 'rules'"
            )
        )
        return []
    for key in data:
        if key != "rules":
            errors.append(
                RuleError(
                    file,
                    locate(root, (str(key),)),
                    None,
                    str(key),
                    "unknown key (a rule file has one key, 'rules')",
                )
            )
    items = data.get("rules")
    if not isinstance(items, list):
        problem = "missing" if "rules" not in data else "must be a list of rules"
        errors.append(RuleError(file, locate(root, ("rules",)), None, "rules", problem))
        return []
    entries: list[_Entry] = []
    for index, item in enumerate(items):
        name = _name_of(item)
        rule: Rule | None = None
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            for detail in exc.errors(include_url=False):
                loc = ("rules", index, *detail["loc"])
                errors.append(
                    RuleError(
                        file, locate(root, loc), name, _field(detail["loc"]), _message(detail)
                    )
                )
        if name is not None:
            entries.append((index, name, rule, root))
    return entries


def _check_receivers(
    path: Path, root: yaml.Node, index: int, rule: Rule, receivers: Collection[str]
) -> list[RuleError]:
    known = ", ".join(sorted(receivers)) or "none"
    return [
        RuleError(
            str(path),
            locate(root, ("rules", index, "notify", position)),
            rule.name,
            "notify",
            f"unknown receiver {name!r} (configured: {known})",
        )
        for position, name in enumerate(_raw_notify(root, index))
        if name not in receivers
    ]


def _raw_notify(root: yaml.Node, index: int) -> list[str]:
    """`notify` as written (before duplicates are dropped), so positions match lines."""
    node = node_at(root, ("rules", index, "notify"))
    if isinstance(node, yaml.SequenceNode):
        return [str(item.value) for item in node.value]
    return [str(node.value)] if isinstance(node, yaml.ScalarNode) else []


def _name_of(item: Any) -> str | None:
    name = item.get("name") if isinstance(item, dict) else None
    return name if isinstance(name, str) else None


def _rule_at(root: yaml.Node | None, data: Any, line: int) -> str | None:
    """The name of the rule whose text contains `line`, for errors found on the raw YAML."""
    rules = node_at(root, ("rules",))
    items = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, yaml.SequenceNode) or not isinstance(items, list):
        return None
    for node, item in zip(rules.value, items, strict=False):
        # A block's end mark sits at column 0 of the line after it.
        last = int(node.end_mark.line) + (1 if node.end_mark.column else 0)
        if line_of(node) <= line <= last:
            return _name_of(item)
    return None


def _field(loc: Sequence[str | int]) -> str | None:
    return ".".join(part for part in loc if isinstance(part, str)) or None


def _message(detail: ErrorDetails) -> str:
    kind = detail["type"]
    if kind == "extra_forbidden":
        parent = ".".join(p for p in detail["loc"][:-1] if isinstance(p, str))
        model = _MODELS.get(parent)
        if model is None:
            return "unknown key"
        allowed = (f.alias or n for n, f in model.model_fields.items())
        return f"unknown key (expected one of: {', '.join(allowed)})"
    if kind == "missing":
        return "required"
    if kind == "value_error":
        return str(detail.get("ctx", {}).get("error", detail["msg"]))
    return detail["msg"]
