"""The console's pure parts and its queries' plans: a notification's fate in words, the
timeline chart's geometry, sessions and CSRF tokens, and each page query on an index."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from consumers.config.service import EndpointAuth
from consumers.config.settings import shipped
from consumers.model.events import RunStatusEvent
from consumers.model.notifications import Notification, NotificationState
from consumers.store import Store, open_store
from consumers.store.queries import TimelineEntry
from consumers.webconsole import reads
from consumers.webconsole.causes import FailureCauses, cause_table
from consumers.webconsole.fate import fate
from consumers.webconsole.session import Sessions
from consumers.webconsole.timeline import MIN_WIDTH, WIDTH, chart, human

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def _note(state: str, reason: str | None = None, **more: Any) -> Notification:
    return Notification(
        id="n1", rule="run-failed", severity=1, fingerprint="f", receiver="ml-oncall",
        receiver_type="email", followup=False, state=NotificationState(state), attempts=0,
        run_id="r1", status="Failed", event_time=T0, alert={}, created_at=T0,
        next_attempt_at=T0, sent_at=None, reason=reason, last_error=None,
    ) if not more else replace(_note(state, reason), **more)  # fmt: skip


def test_each_fate_says_what_held_the_notification_back() -> None:
    silenced = fate(_note("silenced", "silence:3f2a9c"))
    assert silenced.summary == "silenced by silence 3f2a9c" and silenced.silence_id == "3f2a9c"
    assert fate(_note("inhibited", "inhibited:cluster-down")).summary == (
        "inhibited by rule cluster-down"
    )
    assert fate(_note("muted", "muted:weekend")).summary == "muted by time interval weekend"
    assert "active time intervals (office)" in fate(_note("muted", "inactive:office")).summary
    dead = fate(_note("dead", "smtp_5xx", last_error="550 mailbox unavailable", attempts=1))
    assert dead.summary == "dead: smtp_5xx" and dead.detail == "550 mailbox unavailable"
    assert dead.retryable
    sent = fate(_note("sent", attempts=2, sent_at=T0))
    assert sent.summary == "sent at 2026-11-20 08:00:00 UTC after 2 attempts"
    assert not sent.retryable
    retrying = fate(_note("pending", "smtp_4xx", attempts=3, last_error="451 try later"))
    assert retrying.summary.startswith("retrying at 08:00:00 UTC after 3 failed attempts")
    for state in ("throttled", "repeat", "storm", "suppressed", "sending"):
        assert fate(_note(state, state)).summary  # every state has words


def _entry(status: str, seconds: float | None) -> TimelineEntry:
    return TimelineEntry(status, T0, seconds)


def test_the_chart_gives_each_state_its_share_and_an_instant_still_shows() -> None:
    drawn = chart([_entry("Queued", 100), _entry("Running", 300), _entry("Failed", None)])
    queued, running, failed = drawn.segments
    assert failed.width == MIN_WIDTH and failed.x + failed.width == pytest.approx(WIDTH)
    assert running.width == pytest.approx(3 * queued.width)
    assert running.x == pytest.approx(queued.width)
    assert [(t.status, t.seconds) for t in drawn.totals] == [
        ("Queued", 100), ("Running", 300), ("Failed", 0)
    ]  # fmt: skip
    again = chart([_entry("Running", 60), _entry("Queued", 60), _entry("Running", 60)])
    assert dict((t.status, t.seconds) for t in again.totals) == {"Running": 120, "Queued": 60}
    assert chart([]).segments == ()
    assert [human(s) for s in (None, 4, 245, 7380, 100_000)] == [
        "-", "4 s", "4 min 5 s", "2 h 3 min", "1 d 3 h"
    ]  # fmt: skip


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_sessions_are_signed_expire_and_end_when_the_secret_rotates(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("first")
    secret.chmod(0o600)
    sessions = Sessions(EndpointAuth(username="ops", password_file=secret), 3600)
    session, cookie = sessions.new("ops", now=1_000_000)
    assert sessions.read(cookie, now=1_000_100) == session
    assert sessions.read(cookie, now=1_000_000 + 3601) is None  # expired
    sid, expires, user, mac = cookie.split(".")
    forged = base64.urlsafe_b64encode(b"admin").decode()
    assert sessions.read(f"{sid}.{expires}.{forged}.{mac}", now=1_000_100) is None
    assert sessions.read(f"{sid}.{int(expires) + 9}.{user}.{mac}", now=1_000_100) is None
    token = sessions.csrf(session)
    assert sessions.csrf_ok(session, token)
    other, _ = sessions.new(now=1_000_000)
    assert not sessions.csrf_ok(other, token) and not sessions.csrf_ok(None, token)
    assert sessions.who(None, session) == "ops"
    assert sessions.who(_basic("ops", "first"), None) == "ops"
    assert sessions.who(_basic("ops", "wrong"), None) is None
    assert sessions.login("ops", "first") and not sessions.login("ops", "second")
    secret.write_text("second")  # rotated: every session ends
    assert sessions.read(cookie, now=1_000_100) is None
    bearer = Sessions(EndpointAuth(bearer_token=SecretStr("tok")), 60)
    assert bearer.login("", "tok") and not bearer.login("", "nope")
    assert bearer.who("Bearer tok", None) == "bearer-token"
    anyone = Sessions(None, 60)
    assert anyone.who(None, None) == "console"


def _plan(store: Store, query: Any) -> str:
    compiled = query.compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
    return "\n".join(str(row[-1]) for row in rows)


def test_every_page_query_reads_an_index_not_the_table(store: Store) -> None:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("the plans checked are SQLite's")
    plans = {
        "failures": _plan(store, reads.failures_query(200)),
        "run": _plan(store, reads.run_events_query("r1")),
        "all": _plan(store, reads.notifications_query()),
        "dead": _plan(store, reads.notifications_query(state=NotificationState.DEAD)),
        "of a run": _plan(store, reads.notifications_query(run_id="r1")),
        "older": _plan(
            store, reads.notifications_query(before=(T0 + timedelta(days=1), "n9"), limit=100)
        ),
    }
    assert "ix_events_status_time" in plans["failures"]
    assert "sqlite_autoindex_events_1 (RunId=?)" in plans["run"]
    assert "ix_notifications_created" in plans["all"]
    assert "ix_notifications_state_created" in plans["dead"]
    assert "ix_notifications_run" in plans["of a run"]
    assert "ix_notifications_created" in plans["older"]
    for name, plan in plans.items():
        assert "TEMP B-TREE" not in plan, (name, plan)  # no sort of the matching rows


@pytest.fixture(params=["sqlite", "postgresql"])
def both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'c.db'}"
    else:
        url = request.getfixturevalue("fresh_pg")
    opened = open_store(url, migrate=True)
    opened.ensure_partitions(T0 - timedelta(days=1), interval_hours=24, ahead=3)
    yield opened
    opened.dispose()


def test_a_long_message_is_read_as_the_classifier_reads_it(both: Store) -> None:
    """Only the head and the tail leave the database; the cause is the one the whole
    message gets, on SQLite and on PostgreSQL alike."""
    filler = "step 1: loss=0.123 lr=3e-4\n" * 6000  # 150 KB
    table = cause_table(shipped("alert_rules"))
    messages = {
        "tail": filler + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB",
        "head": "QuotaExceeded: Not enough quota available for Standard_NC6\n" + filler,
        "short": "FileNotFoundError: [Errno 2] No such file or directory: 'data/x.csv'",
        "middle": filler[:40_000] + "CUDA out of memory" + filler,  # beyond what is examined
    }
    both.write_batch(
        [
            RunStatusEvent.model_validate(
                {"RunId": run, "Status": "Failed", "TimeGenerated": T0, "Message": text}
            )
            for run, text in messages.items()
        ]
    )
    causes = FailureCauses(table)
    listed = {f.run_id: f.cause.name for f in reads.recent_failures(both, causes, 10)}
    expected = {run: table.classify(text).name for run, text in messages.items()}
    assert listed == expected
    assert expected["tail"] == "cuda_oom" and expected["head"] == "quota"
    assert expected["middle"] != "cuda_oom"
    for run in messages:
        cause = reads.run_failure(both, FailureCauses(table), run)
        assert cause is not None and cause.name == expected[run]
    assert reads.run_failure(both, causes, "no-such-run") is None


def test_notification_pages_lose_no_row_when_many_share_a_time(both: Store) -> None:
    store = both
    from consumers.store.schema import notifications

    rows = [
        {
            "id": f"n{i:03d}", "dedup_key": f"d{i}", "rule": "run-failed", "severity": 1,
            "fingerprint": "f", "throttle_key": "t", "receiver": "ml-oncall",
            "receiver_type": "email", "followup": False, "state": "sent", "attempts": 1,
            "run_id": "r1", "status": "Failed", "event_time": T0, "alert": {},
            "created_at": T0 + timedelta(seconds=i // 100), "next_attempt_at": T0, "kind": "alert",
        }
        for i in range(250)
    ]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(notifications.insert(), rows)
    seen: list[str] = []
    before: tuple[datetime, str] | None = None
    while True:
        page = reads.notifications(store, before=before, limit=40)
        seen.extend(n.id for n in page)
        if len(page) < 40:
            break
        before = (page[-1].created_at, page[-1].id)
    assert seen == sorted((r["id"] for r in rows), key=lambda i: (int(i[1:]) // 100, i))[::-1]
