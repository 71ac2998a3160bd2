"""One YAML position helper (consumers/model/yamlpos.py) for both files users edit: rules and
the cause table find keys given twice alike, and `<<` merge keys are not that: several in one
mapping are all merged, and a key given beside one overrides what it merged."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from consumers.model.causes import check_causes
from consumers.model.errors import RuleError
from consumers.model.yamlpos import parse
from consumers.rules import check_rules, load_rules

RULES = """\
rules:
  - &base
    name: first
    when:
      status: [Failed]
    notify: [chat]
  - <<: *base
    name: second
  - <<: *base
    <<: {severity: 2}
    name: third
    severity: 1
"""

CAUSES = """\
causes:
  - &oom
    name: oom
    description: out of memory
    match: {message: [OutOfMemory]}
  - <<: *oom
    name: oom_killed
    description: killed
  - <<: *oom
    <<: {match: {message: [Killed]}}
    name: third
"""


def test_merge_keys_are_neither_duplicates_nor_hidden_from_the_helper() -> None:
    """Found before construction, which merges the `<<` keys into the mapping (where the
    override `name: second` would then look like a second `name`)."""
    _, data, duplicates = parse(RULES + "  - {name: x, name: y, notify: [chat]}\n")
    assert duplicates == [(13, "name")]  # only the real one
    assert [(rule["name"], rule.get("severity")) for rule in data["rules"]] == [
        ("first", None),
        ("second", None),
        ("third", 1),
        ("y", None),
    ]


def test_rules_with_merge_keys_load_and_a_real_duplicate_is_still_named(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    loaded = load_rules(tmp_path)
    assert [(rule.name, rule.severity) for rule in loaded.rules] == [
        ("first", 3),
        ("second", 3),
        ("third", 1),
    ]
    (tmp_path / "rules.yaml").write_text(RULES + "    name: fourth\n")
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    assert (caught.value.line, caught.value.field) == (13, "name")
    assert [(e.line, e.field) for e in check_rules(tmp_path)] == [(13, "name")]


def test_cause_table_with_merge_keys_loads_and_a_real_duplicate_is_still_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "causes.yaml"
    path.write_text(CAUSES)
    assert check_causes(path) == []
    path.write_text(CAUSES + textwrap.indent("description: twice\ndescription: again\n", "    "))
    assert [(e.line, e.field) for e in check_causes(path)] == [(13, "description")]
