"""The template context (consumers/dispatch/context.py), built from values: a notification
row and what was read for it. Rendering it through the shipped templates against the real
store is in test_receivers.py; the dispatcher sending it, in test_dispatcher.py."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.dispatch.context import (
    MAX_FAILED_CHILDREN,
    STORM_LISTED,
    RunUrl,
    alert_context,
    digest_context,
    header,
    storm_context,
    storm_window,
    variant,
)
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.model.notifications import Notification, NotificationKind, NotificationState
from consumers.store.queries import RunDetail, TimelineEntry

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URL = RunUrl("https://ml.example.com/{WorkspaceName}/runs/{RunId}")


def alert(run_id: str = "run-1", rule: str = "run-failed", **columns: Any) -> Alert:
    event = RunStatusEvent.model_validate(
        {
            "TimeGenerated": T0,
            "RunId": run_id,
            "Status": "Failed",
            "ExperimentName": "bert",
            "WorkspaceName": "ml prod",
            **columns,
        }
    )
    return Alert(
        rule=rule,
        severity=1,
        labels={"team": "vision"},
        receivers=("hook",),
        throttle_key=f"RunId={run_id}",
        event=event,
    )


def row(source: Alert | None = None, **fields: Any) -> Notification:
    source = source or alert()
    values: dict[str, Any] = {
        "id": "n-1",
        "rule": source.rule,
        "severity": source.severity,
        "fingerprint": source.fingerprint,
        "receiver": "hook",
        "receiver_type": "webhook",
        "followup": False,
        "state": NotificationState.SENDING,
        "attempts": 2,
        "run_id": source.event.RunId,
        "status": source.event.Status,
        "event_time": source.event.TimeGenerated,
        "alert": source.model_dump(mode="json"),
        "created_at": T0 + timedelta(seconds=1),
        "next_attempt_at": T0 + timedelta(seconds=1),
        "sent_at": None,
        "reason": None,
        "last_error": None,
    }
    return Notification(**(values | fields))


def child(i: int, status: str) -> dict[str, Any]:
    return {"runId": f"c{i}", "status": status}


def test_one_alert_context_has_the_run_now_its_timeline_and_children() -> None:
    detail = RunDetail(
        run={"runId": "run-1", "status": "Failed"},
        timeline=(
            TimelineEntry("Running", T0 - timedelta(minutes=5), 300.0),
            TimelineEntry("Failed", T0, None, "CUDA out of memory"),
        ),
        children=(*(child(i, "Failed") for i in range(12)), child(99, "Completed")),
    )
    context = alert_context(row(), detail, URL)
    assert set(context) == {
        "notification",
        "alert",
        "event",
        "run",
        "timeline",
        "children",
        "run_url",
    }
    assert context["notification"] == {
        "id": "n-1",
        "receiver": "hook",
        "attempt": 2,
        "created_at": "2026-03-01T12:00:01+00:00",
    }
    assert context["alert"]["rule"] == "run-failed" and context["alert"]["labels"] == {
        "team": "vision"
    }
    assert context["event"]["RunId"] == "run-1"
    assert context["run"] == {"runId": "run-1", "status": "Failed"}
    assert context["timeline"] == [
        {
            "status": "Running",
            "time": "2026-03-01T11:55:00+00:00",
            "seconds_in_state": 300.0,
            "message": None,
        },
        {
            "status": "Failed",
            "time": "2026-03-01T12:00:00+00:00",
            "seconds_in_state": None,
            "message": "CUDA out of memory",
        },
    ]
    children = context["children"]
    assert children["total"] == 13
    assert children["by_status"] == {"Failed": 12, "Completed": 1}
    assert len(children["failed"]) == MAX_FAILED_CHILDREN
    assert context["run_url"] == "https://ml.example.com/ml%20prod/runs/run-1"


def test_a_run_the_store_does_not_know_still_has_a_context() -> None:
    context = alert_context(row(), None, RunUrl(None))
    assert context["run"] is None and context["timeline"] == []
    assert context["children"] == {"total": 0, "by_status": {}, "failed": []}
    assert context["run_url"] is None


@pytest.mark.parametrize("template", ["{NoSuchColumn}", "{0}", "{RunId"])
def test_a_run_url_template_that_cannot_be_filled_is_no_link(template: str) -> None:
    assert RunUrl(template)({"RunId": "r"}) is None


def test_a_run_url_quotes_event_values() -> None:
    url = RunUrl("https://x/{RunId}")({"RunId": "a/b?c d", "ParentRunId": None})
    assert url == "https://x/a%2Fb%3Fc%20d"


def test_a_digest_lists_every_member_with_its_own_link() -> None:
    members = [row(alert("run-1"), id="n-1"), row(alert("run-2"), id="n-2")]
    grouped = [dataclasses.replace(m, group_key="g1") for m in members]
    head = dataclasses.replace(grouped[0], members=tuple(grouped))
    assert variant(head) == "digest"
    context = digest_context(head, {"team": "vision"}, URL)
    assert set(context) == {"notification", "group", "alerts"}
    assert context["notification"] == header(head)
    assert context["group"] == {
        "key": "g1",
        "receiver": "hook",
        "labels": {"team": "vision"},
        "count": 2,
    }
    assert [a["event"]["RunId"] for a in context["alerts"]] == ["run-1", "run-2"]
    assert context["alerts"][1]["run_url"] == "https://ml.example.com/ml%20prod/runs/run-2"
    assert context["alerts"][0]["alert"] == alert("run-1").context()


def test_a_storm_summary_counts_every_held_row_and_lists_at_most_fifty() -> None:
    summary = row(
        kind=NotificationKind.STORM,
        rule="storm-control",
        alert={"window_start": "2026-03-01T12:00:00+00:00", "window_end": "2026-03-01T12:01:00"},
    )
    assert variant(summary) == "storm"
    assert storm_window(summary) == (T0, T0 + timedelta(minutes=1))  # naive text is UTC
    held = [row(alert(f"run-{i}", rule="a" if i % 3 else "b"), id=f"h{i}") for i in range(60)]
    context = storm_context(summary, held)
    assert set(context) == {"notification", "storm"}
    storm = context["storm"]
    assert storm["count"] == 60 and len(storm["alerts"]) == STORM_LISTED
    assert storm["by_rule"] == {"b": 20, "a": 40}
    assert storm["window_start"] == "2026-03-01T12:00:00+00:00"
    assert storm["window_end"] == "2026-03-01T12:01:00+00:00"
    assert storm["alerts"][0] == {
        "rule": "b",
        "severity": 1,
        "run_id": "run-0",
        "status": "Failed",
        "experiment": "bert",
        "workspace": "ml prod",
        "cause": None,
        "time": "2026-03-01T12:00:00+00:00",
    }


def test_every_context_shares_one_notification_header() -> None:
    one = row()
    assert variant(one) == ""
    assert alert_context(one, None, URL)["notification"] == header(one)
    storm = row(
        kind=NotificationKind.STORM,
        alert={"window_start": T0.isoformat(), "window_end": T0.isoformat()},
    )
    assert storm_context(storm, [])["notification"] == header(storm)
