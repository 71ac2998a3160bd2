"""Failure causes: every real message in tests/samples/failure_messages gets its cause, the
table loads with file:line errors, a user file goes first, and a 1 MB message stays cheap."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.model.causes import (
    HEAD,
    TAIL,
    UNKNOWN,
    Cause,
    CauseRule,
    CauseTable,
    cause_text,
    check_causes,
    classify_event,
    load_causes,
    parse_traceback,
    table_files,
)
from consumers.model.errors import RuleError
from consumers.model.events import RunStatusEvent
from consumers.rules.engine import RuleSet
from consumers.rules.loader import load_rules, rule_files
from consumers.rules.model import Rule

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "alert_rules" / "causes.yaml"
MESSAGES = ROOT / "tests" / "samples" / "failure_messages"
CASES: list[dict[str, Any]] = yaml.safe_load((MESSAGES / "cases.yaml").read_text())["cases"]


@pytest.fixture(scope="module")
def table() -> CauseTable:
    return load_causes(SHIPPED)


def _message(case: dict[str, Any]) -> str:
    return (MESSAGES / case["file"]).read_text() if "file" in case else str(case["message"])


@pytest.mark.parametrize(
    "case", CASES, ids=[c.get("file") or f"inline-{c['cause']}" for c in CASES]
)
def test_each_sample_message_gets_its_cause(table: CauseTable, case: dict[str, Any]) -> None:
    got = table.classify(_message(case), case.get("result_type"), case.get("result_signature"))
    assert got == Cause(
        case["cause"], case.get("exception"), case.get("frame"), case.get("user_frame")
    )


def test_every_message_file_is_listed_and_every_cause_has_a_real_sample() -> None:
    listed = {c["file"] for c in CASES if "file" in c}
    on_disk = {p.name for p in MESSAGES.glob("*.txt")}
    assert listed == on_disk
    verbatim = {c["cause"] for c in CASES if c["verbatim"] is not False}
    shipped = set(load_causes(SHIPPED).names) - {UNKNOWN}
    assert shipped <= verbatim, f"causes without a real message: {shipped - verbatim}"


def test_shipped_table_order_and_fallback(table: CauseTable) -> None:
    assert table.names == (
        "cuda_oom",
        "host_oom",
        "cuda_error",
        "preempted",
        "quota",
        "image_build",
        "data_access",
        "timeout",
        "user_code",
        "unknown",
    )
    assert table.classify(None) == Cause(UNKNOWN)
    assert table.classify("") == Cause(UNKNOWN)
    assert table.describe("quota") and table.describe("nope") is None


def test_patterns_are_case_insensitive_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "causes:\n"
        "  - {name: loose, description: d, match: {message: ['disk full']}}\n"
        "  - {name: strict, description: d, case_sensitive: true, match: {message: ['ENOSPC']}}\n"
    )
    table = load_causes(path)
    assert table.classify("DISK FULL on /mnt").name == "loose"
    assert table.classify("write failed: ENOSPC").name == "strict"
    assert table.classify("write failed: enospc").name == UNKNOWN


def test_result_type_and_signature_are_matched_apart_from_the_message(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "causes:\n"
        "  - name: throttled\n"
        "    description: d\n"
        "    match: {result_signature: ['^429$'], result_type: ['^Throttled$']}\n"
    )
    table = load_causes(path)
    assert table.classify("429", None, None).name == UNKNOWN  # not searched in the message
    assert table.classify("x", None, "429").name == "throttled"
    assert table.classify("x", "throttled", None).name == "throttled"


# --- the user's file ------------------------------------------------------------------------


def test_user_file_goes_first_and_replaces_by_name(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(
        "causes:\n"
        "  - name: flaky_storage\n"
        "    description: Our NFS drops out.\n"
        "    match: {message: ['Stale file handle', 'No such file or directory']}\n"
        "  - name: quota\n"
        "    description: Ask the platform team for more cores.\n"
        "    match: {message: ['quota']}\n"
    )
    table = load_causes(SHIPPED, user)
    assert table.names[:2] == ("flaky_storage", "quota")
    assert table.names.count("quota") == 1
    assert table.names[-1] == UNKNOWN
    assert table.describe("quota") == "Ask the platform team for more cores."
    # goes first: a FileNotFoundError is now the user's cause, not the shipped data_access
    filenotfound = (MESSAGES / "22-python-filenotfound.txt").read_text()
    assert table.classify(filenotfound).name == "flaky_storage"
    assert table.classify(filenotfound).exception == "FileNotFoundError"


def test_fallback_description_can_be_changed_but_stays_last(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("causes:\n  - {name: unknown, description: 'Ask #ml-infra.'}\n")
    table = load_causes(SHIPPED, user)
    assert table.names[-1] == UNKNOWN and table.describe(UNKNOWN) == "Ask #ml-infra."


# --- errors name file and line --------------------------------------------------------------


def _errors(tmp_path: Path, text: str) -> list[RuleError]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return check_causes(path)


def test_bad_entries_are_reported_with_file_line_cause_and_field(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        "causes:\n"
        "  - name: ok\n"
        "    description: fine\n"
        "    match: {message: ['fine']}\n"
        "  - name: broken\n"
        "    description: bad regex\n"
        "    match:\n"
        "      message:\n"
        "        - 'ok'\n"
        "        - '(unclosed'\n"
        "  - name: Bad-Name\n"
        "    description: d\n"
        "    match: {message: [x]}\n"
        "  - name: empty\n"
        "    description: no matchers\n"
        "  - name: typo\n"
        "    description: d\n"
        "    mach: {message: [x]}\n",
    )
    where = [(e.line, e.rule, e.field) for e in errors]
    assert (10, "broken", "match.message.1") in where
    assert (11, "Bad-Name", "name") in where
    assert (14, "empty", None) in where
    assert any(line == 18 and rule == "typo" and field == "mach" for line, rule, field in where)
    text = str(next(e for e in errors if e.rule == "broken"))
    assert text.startswith(f"{tmp_path / 'bad.yaml'}:10") and "regular expression" in text
    with pytest.raises(RuleError):
        load_causes(tmp_path / "bad.yaml")


def test_nested_quantifiers_are_refused(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        "causes:\n"
        "  - name: slow\n"
        "    description: d\n"
        "    match:\n"
        "      message:\n"
        "        - '(a+)+$'\n"
        "        - '(?:x|\\w{1,9})*y'\n",
    )
    assert [(e.line, e.field) for e in errors] == [(6, "match.message.0"), (7, "match.message.1")]
    assert "catastrophic backtracking" in str(errors[0])


@pytest.mark.parametrize(
    "pattern", [r"(?:Zonal)?AllocationFailed", r"[(+]+x", r"\(a+\)+", r"(a{2})b+", r"(?m:^x+$)"]
)
def test_harmless_repeats_are_allowed(pattern: str) -> None:
    CauseRule.model_validate({"name": "x", "description": "d", "match": {"message": [pattern]}})


def test_structure_problems(tmp_path: Path) -> None:
    assert "expected a 'causes' list" in str(_errors(tmp_path, "rules: []\n")[0])
    assert _errors(tmp_path, "causes: {a: 1}\n")[0].field == "causes"
    syntax = _errors(tmp_path, "causes:\n  - name: [\n")[0]
    assert syntax.line and "not valid YAML" in str(syntax)
    twice = _errors(
        tmp_path,
        "causes:\n"
        "  - {name: a, description: d, match: {message: [x]}}\n"
        "  - {name: a, description: d, match: {message: [y]}}\n"
        "  - name: b\n"
        "    description: d\n"
        "    description: e\n"
        "    match: {message: [z]}\n",
    )
    assert [(e.line, e.field) for e in twice] == [(6, "description"), (3, "name")]
    assert "first at line 2" in str(twice[1])
    assert "cannot read" in str(check_causes(tmp_path / "missing.yaml")[0])
    assert "takes no match" in str(
        _errors(tmp_path, "causes:\n  - {name: unknown, description: d, match: {message: [x]}}\n")[
            0
        ]
    )


def test_the_shipped_table_is_clean() -> None:
    assert check_causes(SHIPPED) == []


# --- tracebacks ------------------------------------------------------------------------------


def test_traceback_flattened_to_one_line_still_gives_type_and_frame() -> None:
    flat = " ".join((MESSAGES / "26-azureml-user-process-traceback.txt").read_text().split())
    assert parse_traceback(flat) == (
        "SystemExit",
        "driver/amlbi_main.py:226",
        "driver/amlbi_main.py:226",
    )


def test_no_traceback_no_frames(table: CauseTable) -> None:
    assert parse_traceback("ValueError: bad") is None
    assert parse_traceback("Traceback (most recent call last):\n(no frames)") is None
    got = table.classify("ValueError: learning rate must be positive")
    assert got == Cause("user_code")


def test_frames_in_installed_packages_are_not_the_user_frame() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "/opt/conda/lib/python3.10/site-packages/pandas/core/frame.py", line 3761\n'
        '  File "/usr/lib/python3.11/json/decoder.py", line 355, in raw_decode\n'
        '  File "<frozen runpy>", line 88, in _run_code\n'
        "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)\n"
    )
    assert parse_traceback(text) == (
        "json.decoder.JSONDecodeError",
        "<frozen runpy>:88",
        None,
    )


# --- bounded work -----------------------------------------------------------------------------


def test_a_one_megabyte_message_is_classified_quickly_from_its_tail(table: CauseTable) -> None:
    oom = (MESSAGES / "33-azureml-torch-oom-traceback.txt").read_text()
    log = "epoch 1 step 2 loss 0.5 " * 45_000 + oom
    assert len(log) > 1_000_000
    started = time.perf_counter()
    got = table.classify(log)
    elapsed = time.perf_counter() - started
    assert got.name == "cuda_oom" and got.user_frame == "train.py:88"
    assert elapsed < 0.5, f"{elapsed:.3f}s for a 1 MB message"


@pytest.mark.parametrize(
    "filler",
    [
        "a" * 1_100_000,  # one endless word
        " " * 1_100_000,  # whitespace around every \b
        'File "' * 200_000,  # near-misses of the frame pattern
        "Traceback (most recent call last):\n" * 30_000,  # many headers, no frames
        "exceeded " * 120_000,  # near-misses of the bounded timeout pattern
        "(" * 1_000_000 + "Error",  # near-misses of the exception-word pattern
    ],
    ids=["word", "spaces", "frames", "headers", "exceeded", "parens"],
)
def test_pathological_megabyte_messages_stay_bounded(table: CauseTable, filler: str) -> None:
    started = time.perf_counter()
    table.classify(filler)
    assert time.perf_counter() - started < 0.5


def test_only_head_and_tail_are_examined(table: CauseTable) -> None:
    middle = "x" * (HEAD + 10) + "CUDA out of memory" + "y" * (TAIL + 10)
    assert table.classify(middle).name == UNKNOWN
    assert table.classify("PreemptionError" + middle).name == "preempted"
    assert table.classify(middle + "quota").name == "quota"


def test_classify_speed(table: CauseTable, capsys: pytest.CaptureFixture[str]) -> None:
    """Reports the cost per message over every sample (µs); loose bound for a shared box."""
    messages = [(_message(c), c.get("result_type"), c.get("result_signature")) for c in CASES]
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        for message, result_type, signature in messages:
            table.classify(message, result_type, signature)
    per = (time.perf_counter() - started) / (rounds * len(messages)) * 1e6
    with capsys.disabled():
        print(f"\nclassify: {per:.1f} µs per message over {len(messages)} samples")
    assert per < 2000


def test_literal_prefilter_never_changes_a_verdict(table: CauseTable) -> None:
    """The substring test in front of each regex may only skip searches that would fail."""
    texts = [_message(c) for c in CASES]
    texts += [t.upper() for t in texts] + [t.swapcase() for t in texts]
    texts += ["received \u017fIGTERM", "\u212aILLED", "OUT OF MEMORY: KILLED PROCESS 7"]
    for compiled in table._compiled:
        for pattern in compiled.message:
            for text in texts:
                expected = pattern.regex.search(text) is not None
                assert pattern.search(text, text.casefold()) == expected, (pattern, text[:80])


# --- the integration's pure parts ----------------------------------------------------------


def _event(status: str, message: str | None = None, **more: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {"TimeGenerated": "2026-01-01T00:00:00Z", "RunId": "r", "Status": status}
        | {"Message": message}
        | more
    )


def test_classify_event_sets_a_failures_cause_and_clears_any_other(table: CauseTable) -> None:
    traceback = (MESSAGES / "28-python-zerodivision.txt").read_text()
    failed = classify_event(table, _event("Failed", traceback, cause="cuda_oom"))
    assert (failed.cause, failed.cause_detail) == (
        "user_code",
        "ZeroDivisionError at /tmp/ws/src/metrics.py:2",
    )
    assert (
        cause_text(failed.model_dump())
        == "user_code (ZeroDivisionError at /tmp/ws/src/metrics.py:2)"
    )
    running = _event("Running", "CUDA out of memory", cause="cuda_oom", cause_detail="x")
    assert classify_event(table, running).cause is None
    assert classify_event(table, running).cause_detail is None
    quiet = _event("Completed")
    assert classify_event(table, quiet) is quiet  # nothing to change: no copy
    assert classify_event(table, _event("Failed")).cause == UNKNOWN
    assert cause_text(quiet.model_dump()) == ""


def test_the_table_lives_beside_the_rules_and_is_no_rule_file(tmp_path: Path) -> None:
    shipped_dir = SHIPPED.parent
    assert table_files(shipped_dir, shipped_dir) == (SHIPPED, None)
    assert table_files(shipped_dir, tmp_path) == (SHIPPED, None)  # none of the user's
    (tmp_path / "causes.yaml").write_text("causes: []\n")
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    assert table_files(shipped_dir, tmp_path) == (SHIPPED, tmp_path / "causes.yaml")
    assert [p.name for p in rule_files(tmp_path)] == ["rules.yaml"]
    assert "causes.yaml" not in [p.name for p in rule_files(shipped_dir)]
    assert len(load_rules(shipped_dir).rules) > 0  # the shipped table is not read as rules


def test_a_rule_matches_the_cause_by_glob(table: CauseTable) -> None:
    rule = Rule.model_validate(
        {"name": "oom", "when": {"status": ["Failed"], "cause": "*oom"}, "notify": ["infra"]}
    )
    rules = RuleSet([rule])
    oom = classify_event(table, _event("Failed", "CUDA out of memory. Tried to allocate 2 GiB"))
    other = classify_event(table, _event("Failed", "something else"))
    assert [a.rule for a in rules.evaluate(oom)] == ["oom"]
    assert rules.evaluate(other) == []
    where = Rule.model_validate(
        {"name": "w", "when": {"where": "cause == 'host_oom'"}, "notify": ["infra"]}
    )
    host = classify_event(table, _event("Failed", "Killed\nexit code 137"))
    assert [a.rule for a in RuleSet([where]).evaluate(host)] == ["w"]
