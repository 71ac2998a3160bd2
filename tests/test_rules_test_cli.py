"""`runwatch rules test FILE --since 7d`: the dry run over the stored history prints what
would have been raised and sent, and sends (and stores) nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from consumers.cli.main import main
from consumers.model.events import RunStatusEvent
from consumers.store import Store
from tests.rulekit import notes

RULES = """
rules:
  - name: failed
    when: {status: [Failed], experiment: train}
    throttle: {key: [ExperimentName], for: 1h}
    notify: [oncall]
  - name: failures
    when: {status: [Failed]}
    threshold: {value: 3, window: 15m, every: 1m, group_by: [WorkspaceName]}
    notify: [oncall, chat]
  - name: stuck
    absence: {limits: {Queued: 2h}, every: 5m}
    notify: [chat]
"""


def _event(at: datetime, run: str, status: str, **columns: object) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {
            "TimeGenerated": at,
            "RunId": run,
            "Status": status,
            "ExperimentName": "train",
            "WorkspaceName": "ws1",
        }
        | columns
    )


@pytest.fixture
def history(store: Store) -> datetime:
    base = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
    store.write_batch(
        [_event(base + timedelta(minutes=i), f"f{i}", "Failed") for i in range(3)]
        + [_event(base + timedelta(hours=1), "q", "Queued", ExperimentName="eval")]
        + [_event(base - timedelta(days=10), "ancient", "Failed")]  # before --since
    )
    return base


def test_dry_run_prints_alerts_and_notifications(
    store: Store,
    store_url: str,
    history: datetime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rule_file = tmp_path / "team.yaml"
    rule_file.write_text(RULES)
    # An ISO --since, so the ticks (every minute from --since) fall half a minute after each
    # event's minute: with "7d" they fell a fraction of a second after the events, one second
    # off whenever a second boundary passed between the fixture and the command.
    since = (history - timedelta(days=3, seconds=30)).isoformat()
    assert main(["rules", "test", str(rule_file), "--since", since, "--store", store_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("rules test: 4 events from ")
    assert out[0].endswith("(nothing is sent)")
    stamp = f"{history:%Y-%m-%d %H:%M:%S} UTC"
    assert f"{stamp}  FIRING   failed  Failed: f0 in train" in out
    assert out[out.index(f"{stamp}  FIRING   failed  Failed: f0 in train") + 1] == (
        "    -> oncall: send"
    )
    throttled = [i for i, line in enumerate(out) if "FIRING   failed  Failed: f1" in line]
    assert out[throttled[0] + 1] == "    -> oncall: throttled"
    firing = [line for line in out if "FIRING   failures" in line]
    assert firing == [
        f"{history + timedelta(minutes=2, seconds=30):%Y-%m-%d %H:%M:%S} UTC  FIRING   failures  "
        "failures: 3 events in 15m in WorkspaceName=ws1 (>= 3)"
    ]
    resolved = [line for line in out if "RESOLVED failures" in line]
    assert len(resolved) == 1
    assert out[out.index(resolved[0]) + 1] == (
        "    -> no receiver (resolved notifications are opt-in)"
    )
    stuck = [line for line in out if "FIRING   stuck" in line]
    assert len(stuck) == 1 and "run q has been Queued for 2h 0" in stuck[0]
    assert out[-1] == "6 alert(s); 4 notification(s) would have been sent, 2 throttled"
    assert notes(store) == []  # nothing written, nothing sent


def test_dry_run_json_and_unknown_receivers(
    store: Store,
    store_url: str,
    history: datetime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rule_file = tmp_path / "team.yaml"
    rule_file.write_text(RULES)
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        f"store: {{url: '{store_url}'}}\n"
        "receivers:\n"
        "  chat: {webhook: {url: 'http://127.0.0.1:9/hook'}, send_resolved: true}\n"
    )
    code = main(["rules", "test", str(rule_file), "--since", "3d", "-c", str(config), "-o", "json"])
    assert code == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["events"] == 4
    by_rule = {(a["rule"], a["status"]): a for a in document["alerts"]}
    assert by_rule[("failures", "resolved")]["notifications"] == [
        {"receiver": "chat", "outcome": "send"}
    ]
    assert by_rule[("failures", "firing")]["notifications"] == [
        {"receiver": "oncall", "outcome": "unknown receiver"},
        {"receiver": "chat", "outcome": "send"},
    ]
    assert by_rule[("failures", "firing")]["group"] == {"WorkspaceName": "ws1"}


def test_dry_run_reports_rules_that_fail_on_events(
    store: Store, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    store.write_batch(
        [
            _event(at, "poison", "Failed", Properties={"loss": "1e999"}),
            _event(at + timedelta(seconds=1), "big", "Failed", Properties={"loss": "7"}),
        ]
    )
    rule_file = tmp_path / "loss.yaml"
    rule_file.write_text(
        "rules:\n"
        "  - name: big-loss\n"
        '    when: {where: "floor(to_number(properties.loss)) > `5`"}\n'
        "    notify: [oncall]\n"
        "  - name: failed\n"
        "    when: {status: [Failed]}\n"
        "    notify: [oncall]\n"
    )
    args = ["rules", "test", str(rule_file), "--since", "1d", "--store", store_url]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if "FIRING   failed" in line]) == 2
    assert len([line for line in out if "FIRING   big-loss  Failed: big" in line]) == 1
    assert out[-2] == (
        "rule big-loss failed on 1 event(s) or evaluation(s) and was skipped for them "
        "(the log says why)"
    )
    assert main([*args, "-o", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["rule_errors"] == {"big-loss": 1}


def test_dry_run_bad_rule_file(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rule_file = tmp_path / "bad.yaml"
    rule_file.write_text("rules:\n  - name: x\n    threshold: {window: 1h}\n    notify: [a]\n")
    assert main(["rules", "test", str(rule_file), "--store", store_url]) == 1
    assert "threshold.value" in capsys.readouterr().err
