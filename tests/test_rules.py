"""Alert rules: the YAML people write, what each condition matches, the alerts produced, errors
that name file, line, rule and field, and reloading without ever dropping the rules in force."""

from __future__ import annotations

import logging
import os
import signal
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumers.config.settings import shipped
from consumers.model.durations import parse_duration
from consumers.model.errors import RuleError
from consumers.model.events import RunStatusEvent
from consumers.rules import (
    RuleSet,
    check_rules,
    event_data,
    load_rules,
)
from consumers.rules import engine as engine_module
from consumers.service.reload import RuleWatcher
from consumers.telemetry.metrics import Metrics

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)

SMALLEST = """\
rules:
  - name: run-failed
    when:
      status: [Failed]
    notify: [ml-oncall, chat]
"""


def event(status: str = "Failed", **columns: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {"TimeGenerated": T0, "RunId": "run-1", "Status": status, **columns}
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def ruleset(tmp_path: Path, text: str) -> RuleSet:
    write(tmp_path, "rules.yaml", text)
    return load_rules(tmp_path)


def one_rule(when: str, **extra: str) -> str:
    """A file with one rule `r` notifying `chat`, with the given `when:` body (YAML)."""
    body = textwrap.indent(textwrap.dedent(when).strip(), " " * 6)
    more = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    return f"rules:\n  - name: r\n    when:\n{body}\n    notify: [chat]\n{more}"


def matches(rules: RuleSet, ev: RunStatusEvent) -> list[str]:
    return [alert.rule for alert in rules.evaluate(ev)]


# --- the smallest file and the alert it makes ------------------------------------------------


def test_smallest_file_as_written(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, SMALLEST)
    assert [r.name for r in rules.rules] == ["run-failed"]
    assert rules.receivers_used == {"ml-oncall", "chat"}
    [alert] = rules.evaluate(event("Failed"))
    assert alert.rule == "run-failed"
    assert alert.receivers == ("ml-oncall", "chat")
    assert alert.severity == 3
    assert alert.labels == {} and alert.annotations == {}
    assert alert.throttle_key == "RunId=run-1|Status=Failed"
    assert alert.throttle_s == 3600.0
    assert alert.event == event("Failed")
    assert rules.evaluate(event("Running")) == []
    assert rules.evaluate(event("Completed")) == []


def test_severity_labels_annotations_are_carried(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """\
        rules:
          - name: r
            description: for people
            severity: 1
            labels: {team: ml-platform, scope: run}
            annotations:
              summary: A run failed.
            notify: [chat, chat, ml-oncall]
        """,
    )
    [alert] = rules.evaluate(event("Queued"))  # no `when`: every event
    assert alert.severity == 1
    assert alert.labels == {"team": "ml-platform", "scope": "run"}
    assert alert.annotations == {"summary": "A run failed."}
    assert alert.receivers == ("chat", "ml-oncall")  # a receiver listed twice is notified once
    assert alert.context()["severity_name"] == "Sev1 error"


def test_status_is_case_insensitive_and_may_be_one_string(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, one_rule("status: [failed, CANCELED]"))
    assert rules.rules[0].when.status == ("Failed", "Canceled")
    assert matches(rules, event("Failed")) == ["r"]
    assert matches(rules, event("canceled")) == ["r"]
    assert matches(rules, event("Completed")) == []
    single = ruleset(tmp_path, one_rule("status: notresponding"))
    assert matches(single, event("NotResponding")) == ["r"]


def test_experiment_globs_are_case_sensitive(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, one_rule("experiment: train-*"))
    assert matches(rules, event(ExperimentName="train-bert")) == ["r"]
    assert matches(rules, event(ExperimentName="Train-bert")) == []
    assert matches(rules, event(ExperimentName="eval-bert")) == []
    assert matches(rules, event(ExperimentName="x-train-bert")) == []  # the whole value


def test_glob_lists_workspace_and_run_type(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        one_rule(
            """\
            experiment: ["train-*", "eval-?"]
            workspace: prod-*
            run_type: azureml.PipelineRun
            """
        ),
    )
    good = {
        "ExperimentName": "eval-1",
        "WorkspaceName": "prod-eu",
        "RunType": "azureml.PipelineRun",
    }
    assert matches(rules, event(**good)) == ["r"]
    assert matches(rules, event(**(good | {"ExperimentName": "train-x"}))) == ["r"]
    assert matches(rules, event(**(good | {"ExperimentName": "eval-12"}))) == []
    assert matches(rules, event(**(good | {"WorkspaceName": "dev-eu"}))) == []
    assert matches(rules, event(**(good | {"RunType": "azureml.StepRun"}))) == []


def test_a_glob_needs_its_column(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, one_rule("experiment: '*'"))
    assert matches(rules, event(ExperimentName="anything")) == ["r"]
    assert matches(rules, event()) == []


@pytest.mark.parametrize(
    "where",
    [
        "tags.quality == 'fantastic run' && properties.author == 'azureml-user'",
        "Tags.quality == 'fantastic run' && Properties.author == 'azureml-user'",
    ],
)
def test_where_over_tags_and_properties_in_both_cases(tmp_path: Path, where: str) -> None:
    rules = ruleset(tmp_path, one_rule(f'where: "{where}"'))
    fantastic = event(Tags={"quality": "fantastic run"}, Properties={"author": "azureml-user"})
    assert matches(rules, fantastic) == ["r"]
    assert matches(rules, event(Tags={"quality": "fantastic run"})) == []
    assert matches(rules, event(Properties={"author": "azureml-user"})) == []


def test_where_aliases_and_jmespath_truth(tmp_path: Path) -> None:
    data = event(ExperimentName="e", WorkspaceName="w", RunType="t", ParentRunId="p")
    assert {k: event_data(data)[k] for k in ("status", "experiment", "workspace", "run_type")} == {
        "status": "Failed",
        "experiment": "e",
        "workspace": "w",
        "run_type": "t",
    }
    assert event_data(data)["run_id"] == "run-1"
    root = ruleset(tmp_path, one_rule('where: "ParentRunId == null"'))
    assert matches(root, event()) == ["r"]
    assert matches(root, data) == []
    # JMESPath truth: 0 is true, an empty list is false.
    assert matches(ruleset(tmp_path, one_rule('where: "`0`"')), event()) == ["r"]
    assert matches(ruleset(tmp_path, one_rule('where: "Tags.*"')), event()) == []


def test_where_failing_at_run_time_does_not_match_is_counted_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = ruleset(tmp_path, one_rule("where: \"contains(Message, 'CUDA')\""))
    assert matches(rules, event(Message="CUDA out of memory")) == ["r"]
    with caplog.at_level(logging.WARNING, logger="consumers.rules.guard"):
        assert matches(rules, event()) == []  # Message is null: contains() raises
        assert matches(rules, event()) == []
    assert len([r for r in caplog.records if "rule 'r' failed" in r.message]) == 1
    assert rules.guard.errors == {"r": 2}


def test_event_data_is_built_only_for_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[RunStatusEvent] = []
    real = engine_module.event_data

    def counting(ev: RunStatusEvent) -> dict[str, Any]:
        calls.append(ev)
        return real(ev)

    monkeypatch.setattr(engine_module, "event_data", counting)
    write(tmp_path, "a.yaml", one_rule("status: [Failed]"))
    write(
        tmp_path,
        "b.yaml",
        one_rule('status: [Canceled]\nwhere: "ParentRunId == null"').replace("name: r", "name: s"),
    )
    rules = load_rules(tmp_path)
    assert matches(rules, event("Failed")) == ["r"]
    assert matches(rules, event("Running")) == []
    assert calls == []
    assert matches(rules, event("Canceled")) == ["s"]
    assert len(calls) == 1


def test_disabled_rules_are_loaded_but_never_match(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, SMALLEST.replace("    notify:", "    enabled: false\n    notify:"))
    assert [r.name for r in rules.rules] == ["run-failed"]
    assert rules.evaluate(event("Failed")) == []
    assert rules.receivers_used == frozenset()


def test_throttle_key_default_and_custom(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """\
        rules:
          - name: per-experiment
            notify: [chat]
            throttle:
              key: [ExperimentName, Status, ParentRunId]
              for: 30m
          - name: default
            notify: [chat]
          - name: when-too
            notify: [chat]
            throttle: {key: [TimeGenerated], for: 1h30m}
        """,
    )
    a, b, c = rules.evaluate(event("Failed", ExperimentName="train"))
    assert (a.throttle_key, a.throttle_s) == (
        "ExperimentName=train|Status=Failed|ParentRunId=",
        1800,
    )
    assert (b.throttle_key, b.throttle_s) == ("RunId=run-1|Status=Failed", 3600)
    assert (c.throttle_key, c.throttle_s) == ("TimeGenerated=2024-05-01T03:00:00+00:00", 5400)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0s", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "30 m", "m", "1w", "h1", 60])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- errors: file, exact line, rule, field ---------------------------------------------------

BASE = """\
rules:
  - name: ok
    notify: [chat]
  - name: bad
    when:
      status: [Failed]
    notify: [chat]
"""  # the bad rule starts on line 4; `when` on 5, `status` on 6, `notify` on 7

ERROR_CASES = {
    "yaml syntax": ("rules:\n  - name: x\n  notify: [a\n", 3, None, None, "not valid YAML"),
    "tab indent": ("rules:\n\t- name: x\n", 2, None, None, "not valid YAML"),
    "top level a list": ("- name: x\n- name: y\n", 1, None, None, "top level"),
    "top level scalar": ("\n\nrules\n", 3, None, None, "top level"),
    "empty file": ("# nothing\n", None, None, None, "empty"),
    "no rules key": ("\nrule:\n  - name: x\n", 2, None, "rule", "unknown key"),
    "rules not a list": ("rules:\n  name: x\n", 1, None, "rules", "must be a list"),
    "rule not a mapping": ("rules:\n  - ok\n", 2, None, None, "valid dictionary"),
    "unknown rule key": (BASE + "    sevrity: 2\n", 8, "bad", "sevrity", "unknown key"),
    "unknown when key": (
        BASE.replace("      status:", "      stauts:"),
        6,
        "bad",
        "when.stauts",
        "expected one of: status, experiment",
    ),
    "unknown throttle key": (
        BASE + "    throttle:\n      every: 1h\n",
        9,
        "bad",
        "throttle.every",
        "unknown key",
    ),
    "wrong type": (BASE + "    severity: high\n", 8, "bad", "severity", "valid integer"),
    "severity range": (BASE + "    severity: 5\n", 8, "bad", "severity", "less than or equal"),
    "label not a string": (
        BASE + "    labels:\n      team: x\n      tier: [1]\n",
        10,
        "bad",
        "labels.tier",
        "valid string",
    ),
    "bad status": (
        BASE.replace("      status: [Failed]", "      status:\n        - Failed\n        - Faild"),
        8,
        "bad",
        "when.status",
        "unknown status 'Faild'",
    ),
    "empty status": (BASE.replace("[Failed]", "[]"), 6, "bad", "when.status", "empty"),
    "bad glob type": (
        BASE.replace("      status: [Failed]", "      experiment: {a: 1}"),
        6,
        "bad",
        "when.experiment",
        "a string or a list of strings",
    ),
    "bad glob item": (
        BASE.replace("      status: [Failed]", "      workspace:\n        - prod-*\n        - 7"),
        8,
        "bad",
        "when.workspace",
        "valid string",
    ),
    "bad jmespath": (
        BASE.replace("      status: [Failed]", '      where: "tags.quality == "'),
        6,
        "bad",
        "when.where",
        "invalid JMESPath",
    ),
    "bad duration": (
        BASE + "    throttle:\n      for: 30\n",
        9,
        "bad",
        "throttle.for",
        "duration",
    ),
    "bad throttle column": (
        BASE + "    throttle:\n      key:\n        - RunId\n        - Tags\n",
        11,
        "bad",
        "throttle.key",
        "Tags is an object",
    ),
    "missing notify": (BASE.replace("    notify: [chat]\n", "", 2), 2, "ok", "notify", "required"),
    "empty notify": (BASE.replace("notify: [chat]\n", "notify: []\n"), 3, "ok", "notify", "empty"),
    "bad name": (BASE.replace("name: bad", "name: bad rule"), 4, "bad rule", "name", "pattern"),
    "duplicate name in file": (
        BASE.replace("name: bad", "name: ok"),
        4,
        "ok",
        "name",
        "duplicate rule name (first at {dir}/rules.yaml:2)",
    ),
    "key given twice": (BASE + "    when: {}\n", 8, "bad", "when", "given twice"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_name_file_line_rule_and_field(tmp_path: Path, case: str) -> None:
    text, line, rule, field, message = ERROR_CASES[case]
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    error = caught.value
    assert (error.file, error.line, error.rule, error.field) == (str(path), line, rule, field)
    assert message.format(dir=tmp_path) in str(error)
    assert str(error).startswith(f"{path}:{line}" if line else str(path))
    assert check_rules(tmp_path)[0].args == error.args


def test_check_rules_returns_every_error_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", BASE.replace("[Failed]", "[Faild]") + "    severity: 9\n")
    write(tmp_path, "b.yml", "rules:\n  - name: x\n  notify: [a\n")
    write(tmp_path, "c.yaml", BASE.replace("name: ok", "name: fine"))
    write(tmp_path, "notes.txt", "not a rule file")
    write(tmp_path, ".#a.yaml", "an editor's lock file")
    errors = check_rules(tmp_path)
    assert [(Path(e.file).name, e.line, e.field) for e in errors] == [
        ("a.yaml", 6, "when.status"),
        ("a.yaml", 8, "severity"),
        ("b.yml", 3, None),
        ("c.yaml", 4, "name"),  # `bad` again: a duplicate of a.yaml's
    ]
    assert f"first at {tmp_path / 'a.yaml'}:4" in str(errors[-1])
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    assert caught.value.args == errors[0].args


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", SMALLEST)
    second = write(
        tmp_path, "b.yaml", "rules:\n  - name: other\n    notify: [chat]\n" + SMALLEST[7:]
    )
    [error] = check_rules(tmp_path)
    assert (error.file, error.line, error.rule, error.field) == (
        str(second),
        4,
        "run-failed",
        "name",
    )
    assert f"first at {first}:2" in str(error)


def test_receivers_are_checked_only_when_given(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.yaml",
        """\
        rules:
          - name: r
            notify:
              - chat
              - pager
              - ml-oncall
        """,
    )
    assert len(load_rules(tmp_path).rules) == 1
    [error] = check_rules(tmp_path, receivers={"chat", "ml-oncall"})
    assert (error.file, error.line, error.rule, error.field) == (str(path), 5, "r", "notify")
    assert "unknown receiver 'pager' (configured: chat, ml-oncall)" in str(error)
    assert check_rules(tmp_path, receivers={"chat", "ml-oncall", "pager"}) == []


def test_directory_edge_cases(tmp_path: Path) -> None:
    assert len(load_rules(tmp_path)) == 0
    [error] = check_rules(tmp_path / "missing")
    assert error.file == str(tmp_path / "missing") and "cannot list" in str(error)
    write(tmp_path, "a.yaml", "rules: []\n")
    assert load_rules(tmp_path).rules == ()


def test_shipped_rules_load_and_behave() -> None:
    rules = load_rules(shipped("alert_rules"), receivers={"ml-oncall", "chat"})
    names = {r.name for r in rules.rules}
    assert {"run-failed", "step-failed", "run-canceled", "run-not-responding"} <= names
    assert rules.receivers_used == {"ml-oncall", "chat"}
    assert all(r.annotations.get("summary") for r in rules.rules)
    root = event("Failed", RunType="azureml.PipelineRun")
    step = event("Failed", ParentRunId="root-1", RootRunId="root-1", RunType="azureml.StepRun")
    assert matches(rules, root) == ["run-failed"]  # one alert per failed pipeline
    assert matches(rules, step) == ["step-failed"]
    assert matches(rules, event("Canceled")) == ["run-canceled"]
    assert [(a.rule, a.severity) for a in rules.evaluate(event("NotResponding"))] == [
        ("run-not-responding", 2)
    ]
    assert matches(rules, event("Completed")) == []
    assert matches(rules, event("Running")) == []


# --- reloading -------------------------------------------------------------------------------


def reloads(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("runwatch_rules_reload_total", {"result": result})
    return value or 0.0


def test_reload_swaps_only_valid_rule_sets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics(CollectorRegistry())
    watcher = RuleWatcher(tmp_path, metrics, receivers={"ml-oncall", "chat"})
    assert len(watcher.current) == 0
    path = write(tmp_path, "runs.yaml", SMALLEST)
    assert watcher.reload() is True
    old = watcher.current
    assert [r.name for r in old.rules] == ["run-failed"]
    assert metrics.registry.get_sample_value("runwatch_rules_loaded") == 1

    write(tmp_path, "runs.yaml", SMALLEST + "  - name: broken\n    notify: [pager]\n")
    with caplog.at_level(logging.ERROR, logger="consumers.service.reload"):
        assert watcher.reload() is False
    assert watcher.current is old
    assert reloads(metrics, "error") == 1
    assert f"{path}:7, rule 'broken', field 'notify'" in caplog.text
    assert [e.line for e in watcher.last_errors] == [7]
    assert metrics.registry.get_sample_value("runwatch_rules_loaded") == 1

    write(tmp_path, "runs.yaml", SMALLEST + "  - name: second\n    notify: [chat]\n")
    assert watcher.reload() is True
    assert [r.name for r in watcher.current.rules] == ["run-failed", "second"]
    assert (reloads(metrics, "ok"), reloads(metrics, "error")) == (2, 1)
    assert metrics.registry.get_sample_value("runwatch_rules_loaded") == 2
    assert watcher.last_errors == []


def wait_until(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_polling_thread_picks_up_changes(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    watcher = RuleWatcher(tmp_path, metrics)
    assert watcher.reload() is True
    stop = threading.Event()
    thread = watcher.start(stop, interval=0.05)
    try:
        write(tmp_path, "runs.yaml", SMALLEST)
        assert wait_until(lambda: len(watcher.current) == 1)
        write(tmp_path, "more.yml", "rules:\n  - name: more\n    notify: [chat]\n")
        assert wait_until(lambda: len(watcher.current) == 2)
        write(tmp_path, "more.yml", "rules:\n  - name: more\n    notify: chat\n")  # broken
        assert wait_until(lambda: reloads(metrics, "error") == 1)
        time.sleep(0.2)  # an unchanged broken file is reported once, not every poll
        assert reloads(metrics, "error") == 1 and len(watcher.current) == 2
        (tmp_path / "more.yml").unlink()
        assert wait_until(lambda: len(watcher.current) == 1)
    finally:
        stop.set()
        thread.join(timeout=2)
    assert not thread.is_alive()


def test_sighup_reloads(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    watcher = RuleWatcher(tmp_path, metrics)
    watcher.reload()
    stop = threading.Event()
    thread = watcher.start(stop, interval=0.05)  # nothing changes: only SIGHUP reloads
    previous = watcher.install_sighup()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_until(lambda: reloads(metrics, "ok") == 2)
    finally:
        signal.signal(signal.SIGHUP, previous)
        stop.set()

    failures: list[BaseException] = []

    def off_main() -> None:
        try:
            watcher.install_sighup()
        except RuntimeError as exc:
            failures.append(exc)

    other = threading.Thread(target=off_main)
    other.start()
    other.join()
    assert len(failures) == 1
    thread.join(timeout=2)
    assert not thread.is_alive()
