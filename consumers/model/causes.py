"""Why a run failed: a failed run's Message (and ResultType / ResultSignature) -> a cause.

The cause table is YAML (alert_rules/causes.yaml ships the defaults); the first
cause whose matchers hit names the failure, `unknown` when none does. Classification is pure
and bounded: whatever the size of a message, only its first HEAD and last TAIL characters
are examined (the summary line and the end of the log, where the fatal error is), and
patterns with nested quantifiers are refused when the table loads, so that a 1 MB log line
costs the same as a 1 KB one.

When the message holds a Python traceback, the result also names the exception type and
the frame that raised it, whatever the cause: "cuda_oom at train.py:88" is what an on-call
engineer wants to read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from consumers.model.errors import RuleError
from consumers.model.events import RunStatusEvent, Status
from consumers.model.yamlpos import YamlSyntaxError, locate, parse

__all__ = [
    "HEAD",
    "TABLE_FILE",
    "TAIL",
    "UNKNOWN",
    "Cause",
    "CauseRule",
    "CauseTable",
    "Matchers",
    "cause_text",
    "check_causes",
    "classify_event",
    "load_causes",
    "parse_traceback",
    "read_causes",
    "table_files",
]

TABLE_FILE = "causes.yaml"  # in the shipped rules directory, and optionally in the user's

HEAD = 4 * 1024  # the summary Azure ML puts first ("Execution failed. User process ...")
TAIL = 60 * 1024  # the end of the log: the fatal error and the last traceback
UNKNOWN = "unknown"
_UNKNOWN_TEXT = "No known cause matched the message."


def _no_nested_quantifier(pattern: str) -> str:
    """(a+)+ and friends backtrack exponentially on a near-miss: refuse them up front."""
    stack = [False]  # per open group: does it hold a repeat?
    i, n, in_class = 0, len(pattern), False
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]":  # a literal ']' first in a class
                i += 1
        elif char == "(":
            stack.append(False)
        elif char == ")" and len(stack) > 1:
            repeated = stack.pop()
            stack[-1] = stack[-1] or repeated
            following = pattern[i + 1 : i + 2]
            if repeated and (following in ("+", "*") or _is_counted(pattern, i + 1)):
                raise ValueError(
                    f"nested quantifier at {pattern[: i + 2]!r}: risks catastrophic "
                    "backtracking; bound the inner repeat or drop the outer one"
                )
        elif char in "+*" or _is_counted(pattern, i):
            stack[-1] = True
        i += 1
    return pattern


def _is_counted(pattern: str, at: int) -> bool:
    return bool(re.match(r"\{(?:\d+,?\d*|,\d+)\}", pattern[at : at + 24]))


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return pattern


Pattern = Annotated[
    str, Field(min_length=1), AfterValidator(_compiles), AfterValidator(_no_nested_quantifier)
]


class Matchers(BaseModel):
    """What a cause looks for; any one hit is enough."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: tuple[Pattern, ...] = ()
    result_type: tuple[Pattern, ...] = ()
    result_signature: tuple[Pattern, ...] = ()
    python_traceback: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.message or self.result_type or self.result_signature or self.python_traceback
        )


class CauseRule(BaseModel):
    """One entry of the cause table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    description: str = Field(min_length=1, max_length=300)
    case_sensitive: bool = False
    match: Matchers = Matchers()

    @model_validator(mode="after")
    def _matchers(self) -> CauseRule:
        if self.name == UNKNOWN and not self.match.empty:
            raise ValueError(f"{UNKNOWN!r} is the fallback when nothing matches; it takes no match")
        if self.name != UNKNOWN and self.match.empty:
            raise ValueError(
                "matches nothing: give match.message, match.result_type, "
                "match.result_signature or match.python_traceback"
            )
        return self


@dataclass(frozen=True, slots=True)
class Cause:
    """The verdict. `exception`, `frame` and `user_frame` are set when the message holds a
    Python traceback: the final exception's type, the last frame ("file:line"), and the last
    frame outside installed packages and the standard library (the user's own code)."""

    name: str
    exception: str | None = None
    frame: str | None = None
    user_frame: str | None = None

    @property
    def detail(self) -> str | None:
        """What a mail shows after the name: "ValueError at train.py:42" (the user's own
        frame when there is one), None without a traceback."""
        where = self.user_frame or self.frame
        if self.exception and where:
            return f"{self.exception} at {where}"
        return self.exception or where


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A compiled pattern and a literal every match must contain (case-folded), tested with
    `in` first: a substring scan is far cheaper than a case-insensitive regex search. The
    text is case-folded too, so the test only ever lets through more than the regex would."""

    regex: re.Pattern[str]
    literal: str | None

    @classmethod
    def of(cls, pattern: str, flags: int) -> _Pattern:
        return cls(re.compile(pattern, flags), _required_literal(pattern))

    def search(self, text: str, lowered: str) -> bool:
        if self.literal is not None and self.literal not in lowered:
            return False
        return self.regex.search(text) is not None


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: CauseRule
    message: tuple[_Pattern, ...]
    result_type: tuple[_Pattern, ...]
    result_signature: tuple[_Pattern, ...]

    @classmethod
    def of(cls, rule: CauseRule) -> _Compiled:
        flags = 0 if rule.case_sensitive else re.IGNORECASE
        match = rule.match
        return cls(
            rule,
            tuple(_Pattern.of(p, flags) for p in match.message),
            tuple(_Pattern.of(p, flags) for p in match.result_type),
            tuple(_Pattern.of(p, flags) for p in match.result_signature),
        )

    def hits(self, text: str, lowered: str, kind: str, signature: str, traceback: bool) -> bool:
        return (
            (traceback and self.rule.match.python_traceback)
            or any(p.search(text, lowered) for p in self.message)
            or _any(self.result_type, kind)
            or _any(self.result_signature, signature)
        )


def _any(patterns: tuple[_Pattern, ...], value: str) -> bool:
    return bool(value) and any(p.search(value, value.casefold()) for p in patterns)


_SPECIAL_ESCAPES = frozenset("AbBdDsSwWZ0123456789afnrtvxuUNgk")


def _required_literal(pattern: str) -> str | None:
    """The longest run of plain characters outside groups, classes and alternations: text
    every match contains. None when there is no run of 3 or more (the regex then always
    runs). Case-folded, so that case-insensitive patterns can use it too."""
    runs: list[str] = []
    run: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        step = 1
        if char == "|":
            return None  # an alternation at the top: no single literal is required
        if char in "([":
            runs.append("".join(run))
            run.clear()
            step = _skip(pattern, i) - i
        elif char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped in _SPECIAL_ESCAPES or not escaped:
                runs.append("".join(run))
                run.clear()
            else:
                run.append(escaped)
            step = 2
        elif char in "?*+" or _is_counted(pattern, i):
            if run:
                run.pop()  # the repeated character may be absent, or repeated
            runs.append("".join(run))
            run.clear()
            if char == "{":
                step = pattern.index("}", i) + 1 - i
        elif char in ".^$":
            runs.append("".join(run))
            run.clear()
        else:
            run.append(char)
        i += step
    runs.append("".join(run))
    best = max(runs, key=len)
    return best.casefold() if len(best) >= 3 and best.isascii() else None


def _skip(pattern: str, at: int) -> int:
    """The index just after the group or character class that opens at `at`."""
    depth, i, n = 0, at, len(pattern)
    class_start: int | None = None
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if class_start is not None:
            if char == "]" and i > class_start + 1 and pattern[class_start + 1 : i] != "^":
                class_start = None
                if depth == 0:
                    return i + 1
        elif char == "[":
            class_start = i
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


@dataclass(frozen=True)
class CauseTable:
    """The causes in the order they are tried; `unknown` is always last."""

    causes: tuple[CauseRule, ...]
    _compiled: tuple[_Compiled, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = tuple(_Compiled.of(c) for c in self.causes if c.name != UNKNOWN)
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def of(cls, causes: Iterable[CauseRule]) -> CauseTable:
        """Fallback moved last (added if missing); a name given twice is a caller's bug."""
        causes = tuple(causes)
        names = [c.name for c in causes]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"cause names given twice: {twice}")
        fallback = next(
            (c for c in causes if c.name == UNKNOWN),
            CauseRule(name=UNKNOWN, description=_UNKNOWN_TEXT),
        )
        return cls((*(c for c in causes if c.name != UNKNOWN), fallback))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.causes)

    def describe(self, name: str) -> str | None:
        return next((c.description for c in self.causes if c.name == name), None)

    def classify(
        self,
        message: str | None,
        result_type: str | None = None,
        result_signature: str | None = None,
    ) -> Cause:
        """The first cause whose matchers hit, `unknown` otherwise."""
        text = _window(message or "")
        lowered = text.casefold()
        frames = parse_traceback(text)
        name = UNKNOWN
        for cause in self._compiled:
            hit = cause.hits(text, lowered, result_type or "", result_signature or "", bool(frames))
            if hit:
                name = cause.rule.name
                break
        if frames is None:
            return Cause(name)
        return Cause(name, *frames)


def classify_event(table: CauseTable, event: RunStatusEvent) -> RunStatusEvent:
    """A failed run's event with its `cause` and `cause_detail`; any other event without
    them, whatever its input said (a cause is runwatch's verdict, and a bounded label)."""
    if event.Status != Status.Failed:
        if event.cause is None and event.cause_detail is None:
            return event
        return event.model_copy(update={"cause": None, "cause_detail": None})
    cause = table.classify(event.Message, event.ResultType, event.ResultSignature)
    return event.model_copy(update={"cause": cause.name, "cause_detail": cause.detail})


def cause_text(event: Mapping[str, Any]) -> str:
    """How notifications show a cause: "user_code (ValueError at train.py:42)", "cuda_oom";
    "" for an event without one. `event` as in a template context."""
    name = event.get("cause")
    if not name:
        return ""
    detail = event.get("cause_detail")
    return f"{name} ({detail})" if detail else str(name)


def _window(message: str) -> str:
    if len(message) <= HEAD + TAIL:
        return message
    return f"{message[:HEAD]}\n...\n{message[-TAIL:]}"


# --- Python tracebacks ----------------------------------------------------------------------

_TRACEBACK = "Traceback (most recent call last)"
_FRAME = re.compile(r'File "([^"\n]{1,1000})", line (\d{1,9})')
_EXCEPTION_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_.]{0,200})(?::|[ \t]*$)")
_EXCEPTION_WORD = re.compile(
    r"(?<![\w.])([A-Za-z_][A-Za-z0-9_.]{0,200}"
    r"(?:Error|Exception|Exit|Interrupt|Warning|Failure|Fault|Group))(?=:|\s|$)"
)
_INSTALLED = re.compile(
    r"site-packages|dist-packages|[/\\]lib[/\\]python\d[\d.]*[/\\]|^<|[/\\]_vendor[/\\]"
)


def parse_traceback(text: str) -> tuple[str | None, str, str | None] | None:
    """(exception type, last frame, last user frame) of the last traceback in `text`, or None
    when there is none. Frames are "file:line". A traceback flattened to one line (as some
    log shippers do) still yields the frame and, from the words after it, the exception."""
    start = text.rfind(_TRACEBACK)
    if start < 0:
        return None
    frames = list(_FRAME.finditer(text, start))
    if not frames:
        return None
    last = frames[-1]
    user = next((f for f in reversed(frames) if not _INSTALLED.search(f.group(1))), None)
    rest = text[last.end() :]
    return (
        _exception(rest),
        f"{last.group(1)}:{last.group(2)}",
        f"{user.group(1)}:{user.group(2)}" if user else None,
    )


def _exception(rest: str) -> str | None:
    """The first unindented line after the last frame is the exception ("KeyError: 'x'");
    an exception group prints it as "  | ValueError: x"."""
    for raw in rest.splitlines()[1:]:
        stripped = raw.lstrip()
        if stripped.startswith("|"):
            after = stripped[1:]
            if not after.startswith(" ") or after.startswith("  "):
                continue
            line = after[1:]
        elif raw[:1] in (" ", "\t") or not raw:
            continue
        else:
            line = raw
        found = _EXCEPTION_LINE.match(line)
        if found:
            return found.group(1)
    word = _EXCEPTION_WORD.search(rest)
    return word.group(1) if word else None


# --- loading ----------------------------------------------------------------------------------


def load_causes(path: Path, extra: Path | None = None) -> CauseTable:
    """The table of `path`, with the user's `extra` file in front (its entries are tried
    first; one named like a shipped cause replaces it). Raises the first RuleError."""
    causes, errors = read_causes(path, extra)
    if errors:
        raise errors[0]
    return CauseTable.of(causes)


def table_files(shipped_dir: Path, rules_dir: Path) -> tuple[Path, Path | None]:
    """The shipped table, and the user's `causes.yaml` beside their rules (tried first) when
    their rules directory has one and it is not the shipped file itself."""
    shipped = Path(shipped_dir) / TABLE_FILE
    user = Path(rules_dir) / TABLE_FILE
    try:
        if not user.is_file() or user.resolve() == shipped.resolve():
            return shipped, None
    except OSError:
        return shipped, None
    return shipped, user


def check_causes(path: Path, extra: Path | None = None) -> list[RuleError]:
    """Every problem in both files, each with file and line; empty when they would load."""
    return read_causes(path, extra)[1]


def read_causes(path: Path, extra: Path | None = None) -> tuple[list[CauseRule], list[RuleError]]:
    shipped, errors = _read_file(Path(path))
    if extra is None:
        return shipped, errors
    user, user_errors = _read_file(Path(extra))
    overridden = {c.name for c in user}
    return [*user, *(c for c in shipped if c.name not in overridden)], errors + user_errors


def _read_file(path: Path) -> tuple[list[CauseRule], list[RuleError]]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [], [RuleError(file, None, None, None, f"cannot read: {exc.strerror}")]
    except UnicodeDecodeError:
        return [], [RuleError(file, None, None, None, "not UTF-8 text")]
    try:
        root, data, duplicates = parse(text)
    except YamlSyntaxError as exc:
        return [], [RuleError(file, exc.line, None, None, f"not valid YAML: {exc}")]
    errors = [RuleError(file, line, None, key, "key given twice") for line, key in duplicates]
    if not isinstance(data, dict) or "causes" not in data:
        where = locate(root, ())
        return [], [*errors, RuleError(file, where, None, "causes", "expected a 'causes' list")]
    for key in data:
        if key != "causes":
            errors.append(
                RuleError(file, locate(root, (key,)), None, str(key), "unknown key (only 'causes')")
            )
    items = data["causes"]
    if not isinstance(items, list):
        errors.append(RuleError(file, locate(root, ("causes",)), None, "causes", "must be a list"))
        return [], errors
    causes: list[CauseRule] = []
    seen: dict[str, int | None] = {}
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        label = name if isinstance(name, str) else None
        try:
            cause = CauseRule.model_validate(item)
        except ValidationError as exc:
            for detail in exc.errors(include_url=False):
                loc = ("causes", index, *detail["loc"])
                field = ".".join(str(p) for p in detail["loc"]) or None
                message = detail["msg"].removeprefix("Value error, ")
                errors.append(RuleError(file, locate(root, loc), label, field, message))
            continue
        line = locate(root, ("causes", index, "name"))
        if cause.name in seen:
            first = seen[cause.name]
            errors.append(
                RuleError(
                    file, line, cause.name, "name", f"cause given twice (first at line {first})"
                )
            )
            continue
        seen[cause.name] = line
        causes.append(cause)
    return causes, errors
