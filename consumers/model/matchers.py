"""Label matchers (`k=v`, `k!=v`, `k=~regex`, `k!~regex`): one syntax for silences, routes and
inhibition rules, as in Alertmanager. Regexes are anchored (they must match the whole value)
and a label the alert does not have has the value "". Here, not in noise/, because the
store validates a silence's matchers when it records one."""

from __future__ import annotations

import re
from dataclasses import dataclass

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.S)


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Raises ValueError with the expected syntax; a quoted value is unquoted."""
        found = _MATCHER.match(text)
        if found is None:
            raise ValueError(
                f"bad matcher {text!r}: expected name=value, name!=value, name=~regex "
                "or name!~regex"
            )
        name, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regex in matcher {text!r}: {exc}") from None
        return cls(name, op, value, regex)

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_all(texts: tuple[str, ...] | list[str]) -> tuple[Matcher, ...]:
    return tuple(Matcher.parse(text) for text in texts)


def match_all(matchers: tuple[Matcher, ...], labels: dict[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
