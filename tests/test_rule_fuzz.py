"""Property tests over rule evaluation (issue 12): generated events with hostile values and
generated JMESPath `where:` clauses, through the real RuleSet, the scheduled kinds' matcher
and the scheduled evaluation. Whatever the pair, evaluation returns alerts or none, never
raises, takes bounded time, and the rules that do not fail still match; the run tracker's
cut-down copy of an event gives every rule the same verdict as the whole event."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jmespath
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consumers.model.events import RunStatusEvent, Status
from consumers.rules.engine import ALIASES, Matcher, RuleSet, event_data
from consumers.rules.evaluation import Evaluation
from consumers.rules.guard import RuleGuard
from consumers.rules.model import Rule
from consumers.rules.reads import reads_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOUND_S = 2.0  # per example, on a busy shared machine; typical is well under 10 ms

# -- hostile events ---------------------------------------------------------------------------

DEEP = "[" * 3000 + "]" * 3000
HOSTILE = st.sampled_from(
    [
        "1e999",
        "-1e999",
        "1e-999",
        "nan",
        "NaN",
        "inf",
        "-Infinity",
        "-0",
        "0x1F",
        "9" * 5000,
        "1" + "0" * 400,
        "١٢٣",  # Arabic-Indic digits: int() accepts them
        "  7  ",
        "7.",
        "",
        " ",
        "\x00",
        "💥" * 3,
        "é" * 100,
        DEEP,
        '{"a": {"b": {"c": 1}}}',
        "null",
        "true",
        "[1, 2, 3]",
    ]
)
VALUES = st.one_of(HOSTILE, st.text(max_size=30))
KEYS = st.sampled_from(["loss", "team", "step", "list", "my key", "ñ", "", "a", "0"])
LABELS = st.dictionaries(KEYS | st.text(max_size=8), VALUES, max_size=6)
OPTIONAL_TEXT = st.none() | VALUES


@st.composite
def events(draw: st.DrawFn) -> RunStatusEvent:
    columns: dict[str, Any] = {
        "TimeGenerated": T0 + timedelta(seconds=draw(st.integers(0, 3600))),
        "RunId": draw(st.text(min_size=1, max_size=40)),
        "Status": draw(st.sampled_from([s.value for s in Status])),
        "Tags": draw(st.dictionaries(KEYS | st.text(max_size=8), st.none() | VALUES, max_size=6)),
        "Properties": draw(LABELS),
    }
    for labels, key in (("Properties", "loss"), ("Tags", "team")):
        if draw(st.integers(0, 3)):  # mostly there, with a hostile number more often than not
            columns[labels][key] = draw(HOSTILE | VALUES)
    for column in (
        "ParentRunId",
        "ExperimentName",
        "WorkspaceName",
        "RunType",
        "Message",
        "ResultDescription",
        "TriggeringUserName",
    ):
        if draw(st.booleans()):  # else missing
            columns[column] = draw(OPTIONAL_TEXT)
    if draw(st.booleans()):
        # the model bounds it to a BIGINT (what ingest lets through); the extremes stay, as
        # they overflow a float in avg()/sum()
        columns["DurationMs"] = draw(st.integers(-(2**63), 2**63 - 1))
    return RunStatusEvent.model_validate(columns)


# -- generated where: clauses -----------------------------------------------------------------

PATHS = st.sampled_from(
    [
        "properties.loss",
        "tags.team",
        "Tags.step",
        'properties."my key"',
        "tags.list",
        "tags",
        "properties",
        "Message",
        "ExperimentName",
        "RunId",
        "DurationMs",
        "status",
        "run_type",
        "tags.*",
        "@",
        "Tags.list[0]",
        "properties.loss[0:2]",
        "[properties.loss, tags.team]",
        "{a: tags.team, b: Message}",
        "keys(tags)",
        "values(properties)",
        "tags.team.deeper",
    ]
)
LITERALS = st.sampled_from(
    [
        "`5`",
        "`0`",
        "`-1`",
        "`1e308`",
        '`"1e999"`',
        "'vision'",
        "''",
        "`null`",
        "`true`",
        '`[1, 2.5, "x"]`',
        "`{}`",
        "`[]`",
    ]
)
UNARY = ["to_number", "floor", "ceil", "abs", "length", "type", "to_string", "sort"]
UNARY += ["max", "min", "sum", "avg", "reverse", "to_array", "keys", "values", "not_null"]
BINARY = ["contains", "starts_with", "ends_with", "not_null"]
COMPARISONS = ["==", "!=", "<", "<=", ">", ">="]


NUMBERS = st.sampled_from(["properties.loss", "tags.team", "DurationMs", "Message", "`1.5`"])
# Arithmetic on what came in as text: where overflow and NaN live.
NUMERIC = st.one_of(
    st.builds(
        lambda f, a: f"{f}(to_number({a}))", st.sampled_from(["floor", "ceil", "abs"]), NUMBERS
    ),
    st.builds(
        lambda f, a, b: f"{f}([to_number({a}), to_number({b})])",
        st.sampled_from(["sum", "avg", "max", "min", "sort"]),
        NUMBERS,
        NUMBERS,
    ),
)


def _expressions() -> st.SearchStrategy[str]:
    leaves = PATHS | LITERALS | NUMERIC

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(lambda f, a: f"{f}({a})", st.sampled_from(UNARY), inner),
            st.builds(lambda f, a, b: f"{f}({a}, {b})", st.sampled_from(BINARY), inner, inner),
            st.builds(lambda a, b: f"join(', ', [{a}, {b}])", inner, inner),
            st.builds(lambda a: f"join(', ', {a})", inner),
            st.builds(lambda a: f"sort_by({a}, &to_number(@))", inner),
            st.builds(lambda a: f"max_by({a}, &length(@))", inner),
            st.builds(lambda a: f"[{a}][?@ > `1`]", inner),
            st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(COMPARISONS), inner),
            st.builds(lambda a, b: f"({a}) && ({b})", inner, inner),
            st.builds(lambda a, b: f"({a}) || ({b})", inner, inner),
            st.builds(lambda a: f"!({a})", inner),
            st.builds(lambda a: f"({a}) | [0]", inner),
        )

    return st.recursive(leaves, extend, max_leaves=8)


def _compiles(expression: str) -> bool:
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError:
        return False
    return True


WHERES = _expressions().filter(_compiles)


def _rule(name: str, where: str | None, **kind: Any) -> Rule:
    when = {"where": where} if where is not None else {}
    return Rule.model_validate({"name": name, "when": when, "notify": ["chat"], **kind})


def _outcome(where: str, event: RunStatusEvent) -> tuple[str, object]:
    """What a where: says about an event, or the type of what it raised."""
    try:
        value = jmespath.compile(where).search(event_data(event))
    except Exception as exc:
        return ("raised", type(exc))
    return ("value", _nan_marked(value))


def _nan_marked(value: object) -> object:
    """NaN, at any depth (a list of to_number results), as the string "nan": nan != nan."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, list):
        return [_nan_marked(item) for item in value]
    if isinstance(value, dict):
        return {key: _nan_marked(item) for key, item in value.items()}
    return value


# `make test`: 100 examples per property (250 cost the suite ~25 s more); `make fuzz`
# (RUNWATCH_FUZZ=long): 2,500 (~40 ms each here), or RUNWATCH_RULE_FUZZ_EXAMPLES.
_LONG = os.environ.get("RUNWATCH_FUZZ") == "long"
EXAMPLES = int(os.environ.get("RUNWATCH_RULE_FUZZ_EXAMPLES", "2500")) if _LONG else 100
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(where=WHERES, event=events())
def test_per_event_rules_never_raise_and_the_others_still_match(
    where: str, event: RunStatusEvent
) -> None:
    ruleset = RuleSet([_rule("fuzzed", where), _rule("always", None)])
    started = time.perf_counter()
    alerts = ruleset.evaluate(event)
    assert time.perf_counter() - started < BOUND_S
    names = [a.rule for a in alerts]
    assert names[-1:] == ["always"]  # whatever "fuzzed" did, the other rule matched
    assert set(names) <= {"fuzzed", "always"}
    assert ruleset.guard.errors.keys() <= {"fuzzed"}


@FUZZ
@given(where=WHERES, event=events())
def test_the_scheduled_matcher_never_raises(where: str, event: RunStatusEvent) -> None:
    guard = RuleGuard()
    matcher = Matcher.compile(_rule("fuzzed", where), guard=guard)
    started = time.perf_counter()
    assert matcher.matches(event) in (True, False)
    assert time.perf_counter() - started < BOUND_S
    assert sum(guard.errors.values()) <= 1


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=WHERES, batch=st.lists(events(), min_size=1, max_size=4))
def test_the_scheduled_evaluation_never_raises(where: str, batch: list[RunStatusEvent]) -> None:
    evaluation = Evaluation(
        [
            _rule("count", where, threshold={"value": 1, "window": "1h", "every": "1m"}),
            _rule("stuck", where, absence={"limits": {"Running": "1m", "Queued": "1m"}}),
            _rule("long", where, duration={"max": "1m"}),
            _rule("quiet", where, flatline={"window": "1m"}),
            _rule("tree", where, tree={"mode": "rollup", "wait": "1m"}),
            _rule("failures", None, threshold={"value": 1, "window": "1h", "every": "1m"}),
        ]
    )
    evaluation.start_watching(T0)
    started = time.perf_counter()
    evaluation.observe_all(batch)
    alerts = evaluation.evaluate(T0 + timedelta(hours=2))
    assert time.perf_counter() - started < BOUND_S * 3
    assert "failures" not in evaluation.guard.errors
    assert {a.rule for a in alerts} <= {"count", "stuck", "long", "quiet", "tree", "failures"}


@FUZZ
@given(where=WHERES, event=events())
def test_a_cut_event_gives_the_same_verdict_as_the_whole_one(
    where: str, event: RunStatusEvent
) -> None:
    reads = reads_of(jmespath.compile(where).parsed, ALIASES)
    cut = reads.cut(event)
    assume(cut is not event)  # nothing dropped: trivially the same
    assert _outcome(where, cut) == _outcome(where, event)
