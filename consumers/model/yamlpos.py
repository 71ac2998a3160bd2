"""Line numbers for the errors of the YAML files users edit (rules: consumers/rules/loader.py;
the cause table: consumers/model/causes.py): YAML is parsed once into nodes that keep their
marks, and a pydantic error location such as ("rules", 2, "when", "status", 0) is walked down
that tree. Here, in model, so that both can import it.

A message that says `runs.yaml:14` is fixed in seconds; "rules.2.when.status.0" is not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import yaml


class YamlSyntaxError(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse(text: str) -> tuple[yaml.Node | None, Any, list[tuple[int, str]]]:
    """The node tree (for lines), the plain data (for validation) and the duplicated keys,
    from one parse. Duplicates are found before construction, which merges `<<` keys in."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        duplicates = sorted(duplicate_keys(node))
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = "; ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise YamlSyntaxError(mark.line + 1 if mark else None, message) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(None, str(exc)) from None
    finally:
        loader.dispose()
    return node, data, duplicates


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _walk(root: yaml.Node, loc: Sequence[str | int]) -> Iterator[tuple[yaml.Node, int]]:
    """(node, line) for each step of `loc` that exists. A mapping step gives the key's line
    (a block value starts on the next line)."""
    node = root
    for part in loc:
        child: tuple[yaml.Node, int] | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):  # the last of equal keys wins
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child = value, line_of(key)
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            items = node.value
            child = (items[part], line_of(items[part])) if 0 <= part < len(items) else None
        if child is None:
            return
        node = child[0]
        yield child


def locate(root: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The line of the deepest node on `loc` that exists (a missing key: its parent's)."""
    if root is None:
        return None
    lines = [line for _, line in _walk(root, loc)]
    return lines[-1] if lines else line_of(root)


def node_at(root: yaml.Node | None, loc: Sequence[str | int]) -> yaml.Node | None:
    """The node at `loc`, or None if some step is missing."""
    if root is None:
        return None
    steps = list(_walk(root, loc))
    return steps[-1][0] if len(steps) == len(loc) else None


def duplicate_keys(root: yaml.Node | None) -> Iterator[tuple[int, str]]:
    """(line, key) of every key given twice in one mapping: YAML keeps the last silently, so
    a second `when:` would replace the first without a word."""
    stack = [root] if root is not None else []
    visited: set[int] = set()  # aliases share nodes, and may even form cycles
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        yield line_of(key), key.value
                    seen.add(key.value)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
