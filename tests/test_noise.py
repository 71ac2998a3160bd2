"""Noise control end to end: alerts written through the store with the policy, sent by the
dispatcher to a real SMTP server and HTTP endpoint, on an injected clock (no test waits for
group_wait or a storm window in real time)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from consumers.store import Store
from consumers.store.silences import add_silence, expire_silence, list_silences
from tests.conftest import wait_for
from tests.noise_harness import Bench, Clock, body
from tests.servers import HttpServer, SmtpServer

GROUPING = {
    "defaults": {
        "group_by": ["workspace"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "1h",
    }
}


def settle() -> None:
    """Long enough for the dispatcher to claim anything due (it wakes within a second)."""
    time.sleep(1.3)


def test_grouped_alerts_wait_group_wait_and_go_out_as_one_digest(
    store: Store, smtp: SmtpServer, http: HttpServer
) -> None:
    bench = Bench(store, GROUPING, http=http, smtp=smtp)
    evil = "r3<script>alert(1)</script>"
    written = bench.write(
        bench.alert("r1", "mail", "ok"),
        bench.alert("r2", "mail", "ok"),
        bench.alert(evil, "mail", "ok"),
        bench.alert("r9", "mail", workspace="ws-b"),
    )
    assert written == 7
    with bench:
        settle()
        assert smtp.mails == [] and http.hits == []  # group_wait (30 s) has not passed
        bench.advance(31)
        wait_for(lambda: len(smtp.mails) == 2 and len(http.hits) == 1, timeout=10)
        subjects = sorted(str(m.message["Subject"]) for m in smtp.mails)
        assert subjects == [
            "[runwatch] 1 alert workspace=ws-b",
            "[runwatch] 3 alerts workspace=ws-a",
        ]
        mail = next(m for m in smtp.mails if "ws-a" in str(m.message["Subject"]))
        text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = mail.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "3 alerts for mail (workspace=ws-a)" in text
        for run in ("r1", "r2", evil):
            assert f"Failed: {run} in train" in text
        assert "https://ml.example.com/runs/r1" in text
        assert "<script>" not in html and "r3&lt;script&gt;" in html  # autoescaped
        hook = body(http.hits[0])
        assert hook["type"] == "digest" and hook["group"]["labels"] == {"workspace": "ws-a"}
        assert [a["event"]["RunId"] for a in hook["alerts"]] == ["r1", "r2", evil]
        # the mark follows the send (folded in batches under a backlog): wait for it
        wait_for(lambda: all(state == "sent" for state, _ in bench.states().values()), 10)

        # group_interval: a new alert of the flushed group waits until 5 min after the digest
        bench.advance(60)
        bench.write(bench.alert("r4", "mail"))
        # repeat_interval: r1 failing again within the hour is not listed again
        bench.write(bench.alert("r1", "mail", offset_s=5))
        assert bench.states()[("r1", "mail")] in {("sent", None), ("repeat", "repeat")}
        assert bench.suppressed("repeat") == 1
        bench.advance(120)
        settle()
        assert len(smtp.mails) == 2
        bench.advance(125)  # 5 min + 6 s after the first digest
        wait_for(lambda: len(smtp.mails) == 3, timeout=10)
        third = smtp.mails[2].message
        assert str(third["Subject"]) == "[runwatch] 1 alert workspace=ws-a"
        assert "r4" in third.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert third["In-Reply-To"] == mail.message["In-Reply-To"]  # one thread per group


def test_a_silence_added_while_a_group_waits_keeps_its_alerts_out_of_the_digest(
    store: Store, http: HttpServer
) -> None:
    bench = Bench(store, {**GROUPING, **INHIBIT}, http=http)
    bench.write(bench.alert("r1", "ok"), bench.alert("r2", "ok"))
    bench.write(bench.alert("s1", "ok", workspace="ws-s"))
    bench.clock.advance(10)
    add_silence(store, ["run_id=r2"], duration_s=600, comment="", now=bench.clock())
    add_silence(store, ["workspace=ws-s"], duration_s=600, comment="", now=bench.clock())
    with bench:
        bench.advance(25)
        wait_for(lambda: len(http.hits) == 1, timeout=10)
        wait_for(lambda: bench.states()[("s1", "ok")][0] == "silenced", timeout=10)
        settle()
    assert len(http.hits) == 1  # the ws-s digest had nothing left to send
    assert [a["event"]["RunId"] for a in body(http.hits[0])["alerts"]] == ["r1"]
    assert bench.states()[("r2", "ok")][0] == "silenced"
    assert bench.suppressed("silenced") == 2


def test_replayed_batch_changes_no_group(store: Store) -> None:
    bench = Bench(store, GROUPING)
    alerts = (bench.alert("r1"), bench.alert("r2"))
    assert bench.write(*alerts) == 2
    due = {n.next_attempt_at for n in bench.rows()}
    bench.clock.advance(20)
    assert bench.write(*alerts) == 0
    assert {n.next_attempt_at for n in bench.rows()} == due
    assert bench.suppressed("repeat") == 0


def test_silenced_alerts_are_recorded_and_counted_not_sent(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    bench = Bench(store, {}, http=http, smtp=smtp)
    silence = add_silence(
        store,
        ["workspace=ws-a", "rule=~run-.*"],
        duration_s=7200,
        comment="maintenance",
        now=bench.clock(),
        created_by="ops",
    )
    bench.write(bench.alert("r1", "ok"), bench.alert("r2", "ok", workspace="ws-b"))
    assert bench.states() == {
        ("r1", "ok"): ("silenced", f"silence:{silence.id}"),
        ("r2", "ok"): ("pending", None),
    }
    assert bench.suppressed("silenced") == 1
    [listed] = list_silences(store, bench.clock())
    assert (listed.id, listed.silenced, listed.comment) == (silence.id, 1, "maintenance")
    with bench:
        wait_for(lambda: len(http.hits) == 1, timeout=10)
        settle()
        assert [body(h)["event"]["RunId"] for h in http.hits] == ["r2"]
        assert expire_silence(store, silence.id, bench.clock())
        assert list_silences(store, bench.clock()) == []
        bench.write(bench.alert("r3", "ok"))
        bench.dispatcher.wake()
        wait_for(lambda: len(http.hits) == 2, timeout=10)
    assert bench.states()[("r3", "ok")] == ("sent", None)


def test_silence_ends_by_itself(store: Store) -> None:
    bench = Bench(store, {})
    add_silence(store, ["run_id=r1"], duration_s=3600, comment="", now=bench.clock())
    bench.write(bench.alert("r1", "ok"))
    bench.clock.advance(3601)
    bench.write(bench.alert("r1", "ok", status="Canceled"))
    assert [(n.status, n.state) for n in bench.rows()] == [
        ("Failed", "silenced"),
        ("Canceled", "pending"),
    ]


INHIBIT = {
    "inhibit_rules": [
        {
            "name": "workspace-outage",
            "source_matchers": ["scope=workspace"],
            "target_matchers": ["scope!=workspace"],
            "equal": ["workspace"],
            "for": "1h",
        }
    ]
}


def test_workspace_alert_inhibits_per_run_alerts_of_its_workspace(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    bench = Bench(store, INHIBIT, http=http, smtp=smtp)
    outage = bench.alert(
        "ws-a-failures", "ok", rule="workspace-failures", labels={"scope": "workspace"}
    )
    bench.write(bench.alert("r1", "ok"), outage)  # same batch: the source still counts
    bench.clock.advance(600)
    bench.write(bench.alert("r2", "ok"), bench.alert("r3", "ok", workspace="ws-b"))
    assert bench.states() == {
        ("ws-a-failures", "ok"): ("pending", None),
        ("r1", "ok"): ("inhibited", "inhibited:workspace-outage"),
        ("r2", "ok"): ("inhibited", "inhibited:workspace-outage"),
        ("r3", "ok"): ("pending", None),
    }
    assert bench.suppressed("inhibited") == 2
    bench.clock.advance(3600)  # the source is older than `for`
    bench.write(bench.alert("r4", "ok"))
    assert bench.states()[("r4", "ok")] == ("pending", None)
    with bench:
        wait_for(lambda: len(http.hits) == 3, timeout=10)
    assert sorted(body(h)["event"]["RunId"] for h in http.hits) == ["r3", "r4", "ws-a-failures"]


INTERVALS = {
    "time_intervals": {
        "weekend": [{"weekdays": ["saturday:sunday"], "location": "Europe/Berlin"}],
        "business-hours": [
            {
                "weekdays": ["monday:friday"],
                "times": [{"start_time": "09:00", "end_time": "17:00"}],
                "location": "Europe/Berlin",
            }
        ],
    },
    "defaults": {"mute_time_intervals": ["weekend"]},
    "route": {
        "routes": [
            {
                "matchers": ["severity=~0|1"],
                "receiver": "pager",
                "active_time_intervals": ["business-hours"],
            }
        ]
    },
}


@pytest.mark.parametrize(
    ("now", "mail", "pager"),
    [
        # Saturday 23:30 UTC is Sunday 00:30 in Berlin: weekend
        (
            "2026-11-21T23:30:00+00:00",
            ("muted", "muted:weekend"),
            ("muted", "inactive:business-hours"),
        ),
        # Sunday 23:30 UTC is Monday 00:30 in Berlin: not the weekend, not business hours
        ("2026-11-22T23:30:00+00:00", ("pending", None), ("muted", "inactive:business-hours")),
        # Monday 08:30 UTC is 09:30 in Berlin (CET, UTC+1)
        ("2026-11-23T08:30:00+00:00", ("pending", None), ("pending", None)),
        # Monday 16:30 UTC is 17:30 in Berlin: after hours
        ("2026-11-23T16:30:00+00:00", ("pending", None), ("muted", "inactive:business-hours")),
        # In summer Berlin is UTC+2: Friday 15:30 UTC is 17:30 there
        ("2026-07-03T15:30:00+00:00", ("pending", None), ("muted", "inactive:business-hours")),
    ],
)
def test_mute_and_active_time_intervals_follow_the_time_zone(
    store: Store,
    now: str,
    mail: tuple[str, str | None],
    pager: tuple[str, str | None],
) -> None:
    bench = Bench(store, INTERVALS, clock=Clock(datetime.fromisoformat(now)))
    bench.write(bench.alert("r1", "mail", severity=1))
    assert bench.states() == {("r1", "mail"): mail, ("r1", "pager"): pager}


def test_storm_sends_the_limit_then_one_summary(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    bench = Bench(store, {"storm": {"max_per_minute": 3}}, http=http, smtp=smtp)
    bench.write(*(bench.alert(f"r{i:02d}", "ok", "mail") for i in range(10)))
    states = [state for state, _ in bench.states().values()]
    assert states.count("pending") == 6 and states.count("storm") == 14
    assert bench.suppressed("storm") == 14
    with bench:
        wait_for(lambda: len(http.hits) == 3 and len(smtp.mails) == 3, timeout=10)
        settle()
        assert len(http.hits) == 3  # the summary waits for the end of the minute
        bench.advance(56)
        wait_for(lambda: len(http.hits) == 4 and len(smtp.mails) == 4, timeout=10)
    summary = body(http.hits[3])
    assert summary["type"] == "storm" and summary["storm"]["count"] == 7
    assert summary["storm"]["by_rule"] == {"run-failed": 7}
    assert [a["run_id"] for a in summary["storm"]["alerts"]] == [f"r{i:02d}" for i in range(3, 10)]
    mail = smtp.mails[3].message
    assert str(mail["Subject"]) == "[runwatch] Alert storm: 7 notifications held back for mail"
    assert "run-failed" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # the next minute starts a fresh count
    bench.clock.advance(10)
    bench.write(bench.alert("r-next", "ok"))
    assert bench.states()[("r-next", "ok")] == ("pending", None)


ROUTES = {
    "route": {
        "receiver": "mail",
        "group_wait": "10s",
        "routes": [
            {"matchers": ["severity=~0|1"], "receiver": "pager", "continue": True},
            {
                "matchers": ["workspace=ws-a"],
                "receiver": "team-a",
                "group_by": ["rule"],
                "group_wait": "1m",
            },
        ],
    }
}


def test_routing_tree_beside_rule_receivers(
    store: Store, http: HttpServer, smtp: SmtpServer
) -> None:
    bench = Bench(store, ROUTES, http=http, smtp=smtp)
    bench.write(
        bench.alert("sev1-a", "ok", severity=1),  # pager (continue), then team-a; ok from the rule
        bench.alert("sev3-a", "ok", severity=3),  # team-a
        bench.alert("sev3-b", "ok", severity=3, workspace="ws-b"),  # root: mail
    )
    rows = {(n.run_id, n.receiver): n for n in bench.rows()}
    assert sorted(rows) == [
        ("sev1-a", "ok"),
        ("sev1-a", "pager"),
        ("sev1-a", "team-a"),
        ("sev3-a", "ok"),
        ("sev3-a", "team-a"),
        ("sev3-b", "mail"),
        ("sev3-b", "ok"),
    ]
    start = bench.clock()
    assert rows[("sev1-a", "team-a")].next_attempt_at == start + timedelta(minutes=1)
    assert rows[("sev1-a", "team-a")].group_key == rows[("sev3-a", "team-a")].group_key
    assert rows[("sev1-a", "pager")].group_key is None  # no group_by inherited: sent now
    with bench:
        wait_for(lambda: len(http.on("/ok")) == 3 and len(http.on("/pager")) == 1, timeout=10)
        wait_for(lambda: len(smtp.mails) == 1, timeout=10)
        assert http.on("/team-a") == []
        bench.advance(61)
        wait_for(lambda: len(http.on("/team-a")) == 1, timeout=10)
    digest = body(http.on("/team-a")[0])
    assert digest["group"]["labels"] == {"rule": "run-failed"}
    assert sorted(a["event"]["RunId"] for a in digest["alerts"]) == ["sev1-a", "sev3-a"]


def test_owner_routing_mails_the_runs_user(store: Store, smtp: SmtpServer) -> None:
    owners = {"addresses": {"alice": "alice@lab.example"}, "domain": "corp.example"}
    noise = {"owners": {**owners, "allow": "[a-z]+"}}
    bench = Bench(store, noise, smtp=smtp)
    bench.write(
        bench.alert("r1", "owner", user="alice"),
        bench.alert("r2", "owner", user="bob"),
        bench.alert("r3", "owner", user="not a user!"),
        bench.alert("r4", "owner"),
    )
    assert bench.states() == {
        ("r1", "owner:alice@lab.example"): ("pending", None),
        ("r2", "owner:bob@corp.example"): ("pending", None),
        ("r3", "owner"): ("dead", "unknown_owner"),
        ("r4", "owner"): ("dead", "unknown_owner"),
    }
    with bench:
        wait_for(lambda: len(smtp.mails) == 2, timeout=10)
    recipients = sorted(m.envelope_to[0] for m in smtp.mails)
    assert recipients == ["alice@lab.example", "bob@corp.example"]
    assert {n.receiver_type for n in bench.rows() if n.state == "sent"} == {"email"}


def test_the_same_decisions_on_postgresql(pg_url: str) -> None:
    """One code path: silences, inhibition, grouping and storm rows on PostgreSQL, and a
    claim takes a whole group."""
    from consumers.store import open_store
    from consumers.store.outbox import Outbox

    store = open_store(pg_url, migrate=True)
    try:
        noise = {**INHIBIT, **GROUPING, "storm": {"max_per_minute": 1}}
        noise["route"] = {"routes": [{"matchers": ["workspace=ws-c"], "receiver": "pager"}]}
        bench = Bench(store, noise)
        add_silence(store, ["run_id=r-silenced"], duration_s=60, comment="", now=bench.clock())
        outage = bench.alert("ws-b-outage", "ok", labels={"scope": "workspace"}, workspace="ws-b")
        bench.write(
            outage,
            bench.alert("r1", "ok"),
            bench.alert("r2", "ok"),
            bench.alert("r-silenced", "ok"),
            bench.alert("r-inhibited", "ok", workspace="ws-b"),
            bench.alert("c1", workspace="ws-c"),
            bench.alert("c2", workspace="ws-c"),
        )
        states = bench.states()
        assert states[("r-silenced", "ok")][0] == "silenced"
        assert states[("r-inhibited", "ok")] == ("inhibited", "inhibited:workspace-outage")
        assert states[("c1", "pager")] == ("pending", None)
        assert states[("c2", "pager")] == ("storm", "storm")
        bench.clock.advance(31)
        batches = []
        while claimed := Outbox(store).claim(bench.clock(), limit=1, lease_s=60):
            batches.append(sorted((n.run_id, n.receiver) for n in claimed))
        assert [("r1", "ok"), ("r2", "ok")] in batches  # a limit of 1 does not split a group
        assert [("c1", "mail"), ("c2", "mail")] in batches
        assert [("c1", "pager")] in batches
        assert len(batches) == 4  # and ws-b-outage; the storm summary is due at the minute's end
    finally:
        store.dispose()
