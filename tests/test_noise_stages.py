"""Each noise-control stage, the policy and the recorder against the in-memory state port:
no database, no dispatcher (tests/test_noise.py runs the same decisions on the real store)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from consumers.config.noise import InhibitRule, NoiseSettings
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.model.notifications import Notification, NotificationGroup, NotificationState
from consumers.model.silences import Silence
from consumers.model.timeintervals import TimeEntry
from consumers.noise.decision import Candidate, Decision
from consumers.noise.grouping import Grouper, group_key
from consumers.noise.inhibit import Inhibitor
from consumers.noise.matchers import alert_labels
from consumers.noise.muting import Muting
from consumers.noise.policy import NoisePolicy
from consumers.noise.routing import Target
from consumers.noise.silences import Silencer
from consumers.noise.storm import StormLimit
from consumers.outbox.recheck import recheck
from consumers.outbox.recorder import Recorder
from tests.memory_state import MemoryState

NOW = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)  # a Monday, 5 s into a minute
KINDS = {"mail": "email", "hook": "webhook", "pager": "webhook"}
S = NotificationState


def alert(
    run: str,
    *receivers: str,
    rule: str = "run-failed",
    workspace: str = "ws-a",
    labels: dict[str, str] | None = None,
    **more: Any,
) -> Alert:
    event = RunStatusEvent.model_validate(
        {
            "TimeGenerated": NOW,
            "RunId": run,
            "Status": "Failed",
            "WorkspaceName": workspace,
            "ExperimentName": "train",
        }
        | more.pop("event", {})
    )
    return Alert(
        rule=rule,
        receivers=receivers or ("mail",),
        labels=labels or {},
        throttle_key=f"RunId={run}",
        event=event,
        **more,
    )


def candidate(a: Alert, receiver: str = "mail", target: Target | None = None) -> Candidate:
    target = target or Target(receiver, "rule")
    return Candidate(a, alert_labels(a), receiver, KINDS[receiver], target, a.dedup_key(receiver))


def silence(silence_id: str, *matchers: str, minutes: float = 60) -> Silence:
    return Silence(
        id=silence_id,
        matchers=matchers,
        starts_at=NOW - timedelta(minutes=1),
        ends_at=NOW + timedelta(minutes=minutes),
        created_by="ops",
        comment="",
        created_at=NOW,
    )


# -- labels ------------------------------------------------------------------------------


def test_labels_carry_aliases_tags_group_values_then_the_rules_labels() -> None:
    a = alert(
        "r1",
        labels={"team": "ml", "workspace": "override"},
        event={"TriggeringUserName": "alice", "ParentRunId": "p", "Tags": {"q": "x", "n": None}},
        group={"RootRunId": "p"},
    )
    labels = alert_labels(a)
    assert labels["rule"] == labels["alertname"] == "run-failed"
    assert labels["severity"] == "3"
    assert labels["run_id"] == labels["RunId"] == "r1"
    assert labels["user"] == labels["TriggeringUserName"] == "alice"
    assert labels["parent_run_id"] == "p"
    assert labels["RootRunId"] == "p"  # the group's value (the event has none)
    assert (labels["tags.q"], labels["tags.n"]) == ("x", "")
    assert labels["workspace"] == "override" and labels["WorkspaceName"] == "ws-a"
    assert "tags" not in labels and "Tags" not in labels  # maps are not labels


# -- inhibition ----------------------------------------------------------------------------

OUTAGE: dict[str, Any] = {
    "name": "outage",
    "source_matchers": ["scope=workspace"],
    "target_matchers": ["scope!=workspace"],
    "equal": ["workspace"],
    "for": "10m",
}
RULE = InhibitRule.model_validate(OUTAGE)


def test_inhibition_source_mutes_targets_with_the_same_equal_labels_for_a_while() -> None:
    state, inhibitor = MemoryState(), Inhibitor((RULE,))
    source = alert("ws-a", labels={"scope": "workspace"})
    inhibitor.record(state, [(source, alert_labels(source))], NOW)
    decide = inhibitor.decide
    assert decide(candidate(alert("r1")), state, NOW) == Decision(S.INHIBITED, "inhibited:outage")
    assert decide(candidate(alert("r2", workspace="ws-b")), state, NOW) is None
    assert decide(candidate(source), state, NOW) is None  # not itself
    later = NOW + timedelta(minutes=10)
    assert decide(candidate(alert("r1")), state, later) is None


def test_a_resolution_starts_no_inhibition() -> None:
    state, inhibitor = MemoryState(), Inhibitor((RULE,))
    resolved = alert("ws-a", labels={"scope": "workspace"}, status="resolved")
    inhibitor.record(state, [(resolved, alert_labels(resolved))], NOW)
    assert state.inhibitions == {}


# -- silences ----------------------------------------------------------------------------------


def test_silencer_matches_every_matcher_of_an_active_silence() -> None:
    state = MemoryState(
        silences=[
            silence("s1", "workspace=ws-a", "rule=~run-.*"),
            silence("bad", "no matcher at all"),  # written by hand: ignored
            silence("over", "workspace=~.*", minutes=-0.5),  # ended
        ]
    )
    silencer = Silencer.load(state, NOW)
    got = silencer.decide(candidate(alert("r1")), state, NOW)
    assert got == Decision(S.SILENCED, "silence:s1")
    assert silencer.decide(candidate(alert("r1", workspace="ws-b")), state, NOW) is None
    assert not Silencer.load(MemoryState(), NOW)


# -- time intervals ------------------------------------------------------------------------

OFFICE: dict[str, Any] = {
    "weekdays": ["monday:friday"],
    "times": [{"start_time": "09:00", "end_time": "17:00"}],
    "location": "Europe/Berlin",
}
BERLIN_OFFICE = (TimeEntry.model_validate(OFFICE),)


@pytest.mark.parametrize(
    ("mute", "active", "expected"),
    [
        (("office",), (), Decision(S.MUTED, "muted:office")),
        ((), ("office",), None),  # 11:00 in Berlin on a Monday
        ((), ("night",), Decision(S.MUTED, "inactive:night")),
        ((), (), None),
    ],
)
def test_muting_by_mute_and_active_intervals(
    mute: tuple[str, ...], active: tuple[str, ...], expected: Decision | None
) -> None:
    night = (TimeEntry.model_validate({"times": [{"start_time": "00:00", "end_time": "06:00"}]}),)
    muting = Muting({"office": BERLIN_OFFICE, "night": night})
    target = Target("mail", "rule", mute=mute, active=active)
    assert muting.decide(candidate(alert("r1"), target=target), MemoryState(), NOW) == expected


# -- grouping ----------------------------------------------------------------------------------

GROUPED = Target("mail", "rule", group_by=("workspace",), group_wait=30, group_interval=300)


def test_a_new_group_waits_group_wait_once_per_batch() -> None:
    state, grouper = MemoryState(), Grouper()
    first = grouper.decide(candidate(alert("r1"), target=GROUPED), state, NOW)
    second = grouper.decide(candidate(alert("r2"), target=GROUPED), state, NOW)
    key = group_key(GROUPED, "mail", {"workspace": "ws-a"})
    assert first == second == Decision(due=NOW + timedelta(seconds=30), group_key=key)
    assert state.groups[key].labels == {"workspace": "ws-a"}
    assert grouper.decide(candidate(alert("r3"), target=Target("mail", "rule")), state, NOW) is None


def test_after_a_digest_joiners_wait_group_interval_and_a_quiet_group_starts_over() -> None:
    state = MemoryState()
    key = group_key(GROUPED, "mail", {"workspace": "ws-a"})
    flushed = NotificationGroup(key, "mail", "rule", {"workspace": "ws-a"}, None, NOW)
    state.groups[key] = flushed
    later = NOW + timedelta(seconds=60)
    got = Grouper().decide(candidate(alert("r1"), target=GROUPED), state, later)
    assert got is not None and got.due == NOW + timedelta(seconds=300)
    assert state.groups[key].next_flush_at == NOW + timedelta(seconds=300)
    state.groups[key] = flushed
    quiet = NOW + timedelta(hours=5)  # beyond repeat_interval (4 h)
    got = Grouper().decide(candidate(alert("r1"), target=GROUPED), state, quiet)
    assert got is not None and got.due == quiet + timedelta(seconds=30)


def test_repeat_within_repeat_interval_but_never_a_resolution_or_a_replay() -> None:
    state, recorder = MemoryState(), Recorder(KINDS, NoisePolicy(_settings(GROUPED_NOISE)))
    first = alert("r1", "mail")
    recorder.record(state, [first], NOW)
    again = alert("r1", "mail", event={"Status": "Failed", "TimeGenerated": NOW.isoformat()})
    assert recorder.record(state, [again], NOW + timedelta(seconds=5)) == 0  # a replay
    retry = alert("r1", "mail", event={"TimeGenerated": (NOW + timedelta(minutes=1)).isoformat()})
    recorder.record(state, [retry], NOW + timedelta(minutes=1))
    resolved = alert("r1", "mail", instance="i1", status="resolved")
    recorder.record(state, [resolved], NOW + timedelta(minutes=2))
    rows = sorted(state.rows.values(), key=lambda row: row["created_at"])
    assert [(row["state"], row["reason"]) for row in rows] == [
        ("pending", None),
        ("repeat", "repeat"),
        ("pending", None),
    ]


GROUPED_NOISE: dict[str, Any] = {"defaults": {"group_by": ["workspace"]}}


def _settings(noise: dict[str, Any]) -> NoiseSettings:
    return NoiseSettings.model_validate(noise)


# -- storm control -----------------------------------------------------------------------------


def test_storm_limit_counts_live_ungrouped_rows_of_the_minute() -> None:
    state, recorder = MemoryState(), Recorder(KINDS, NoisePolicy(_settings({})))
    recorder.record(state, [alert(f"r{i}") for i in range(2)], NOW)
    limit = StormLimit(2)
    got = limit.decide(candidate(alert("r9")), state, NOW)
    assert got is not None and got.state == S.STORM and got.storm is not None
    assert (got.storm.start, got.storm.end) == (
        NOW - timedelta(seconds=5),
        NOW + timedelta(seconds=55),
    )
    assert limit.decide(candidate(alert("r9")), state, NOW + timedelta(minutes=1)) is None
    assert StormLimit(3).decide(candidate(alert("r9")), state, NOW) is None


# -- the policy: stages in order ---------------------------------------------------------------


def test_the_first_stage_that_decides_wins_in_alertmanagers_order() -> None:
    noise = {
        "inhibit_rules": [OUTAGE],
        "time_intervals": {"office": [OFFICE]},
        "defaults": {"mute_time_intervals": ["office"], "group_by": ["workspace"]},
    }
    state = MemoryState(silences=[silence("s1", "run_id=~r.*")])
    source = alert("outage", labels={"scope": "workspace"})
    inhibited, silenced = alert("r1"), alert("r2", workspace="ws-b")
    Recorder(KINDS, NoisePolicy(_settings(noise))).record(state, [source, inhibited, silenced], NOW)
    assert state.states() == {
        ("outage", "mail"): ("muted", "muted:office"),
        ("r1", "mail"): ("inhibited", "inhibited:outage"),
        ("r2", "mail"): ("silenced", "silence:s1"),
    }


# -- the recorder --------------------------------------------------------------------------------


def test_recorder_states_before_noise_and_counts_only_noise_decisions() -> None:
    counter = Counter("suppressed", "", ["reason"], registry=CollectorRegistry())
    policy = NoisePolicy(_settings({"storm": {"max_per_minute": 1}}), counter)
    state = MemoryState(silences=[silence("s1", "run_id=quiet")])
    alerts = [
        alert("old", stale=True),
        alert("nowhere", "nobody"),
        alert("t1", throttle_s=600),
        alert("t2", throttle_s=600).model_copy(update={"throttle_key": "RunId=t1"}),
        alert("quiet"),
        alert("loud", "hook"),
        alert("one-too-many"),
    ]
    assert Recorder(KINDS, policy).record(state, alerts, NOW) == 7
    assert state.states() == {
        ("old", "mail"): ("suppressed", "stale"),
        ("nowhere", "nobody"): ("dead", "unknown_receiver"),
        ("t1", "mail"): ("pending", None),
        ("t2", "mail"): ("throttled", "throttled"),
        ("quiet", "mail"): ("silenced", "silence:s1"),
        ("loud", "hook"): ("pending", None),
        ("one-too-many", "mail"): ("storm", "storm"),
    }
    [summary] = [row for row in state.rows.values() if row["kind"] == "storm"]
    assert (summary["receiver"], summary["state"], summary["next_attempt_at"]) == (
        "mail",
        "pending",
        NOW + timedelta(seconds=55),
    )
    assert state.rows[alerts[1].dedup_key("nobody")]["receiver_type"] == "unknown"
    counted = {r: counter.labels(reason=r)._value.get() for r in ("silenced", "storm")}
    assert counted == {"silenced": 1, "storm": 1}


def test_recorder_marks_follow_ups_and_routes_a_resolution_only_to_opted_in_receivers() -> None:
    routes = {"route": {"routes": [{"matchers": ["rule=slow"], "receiver": "pager"}]}}
    recorder = Recorder(KINDS, NoisePolicy(_settings(routes)), resolved_receivers={"hook"})
    state = MemoryState()
    firing = alert("r1", "mail", "hook", rule="slow", instance="i1")
    recorder.record(state, [firing], NOW)
    resolved = firing.model_copy(update={"status": "resolved", "receivers": ("hook",)})
    recorder.record(state, [resolved], NOW + timedelta(minutes=5))
    rows = sorted(state.rows.values(), key=lambda row: (row["created_at"], row["receiver"]))
    assert [(row["receiver"], row["followup"]) for row in rows] == [
        ("hook", False),
        ("mail", False),
        ("pager", False),
        ("hook", True),  # the resolution threads under the firing; pager did not opt in
    ]


def test_owner_receiver_becomes_the_runs_address_or_stays_dead() -> None:
    owners = {"owners": {"addresses": {"alice": "alice@lab.example"}}}
    state = MemoryState()
    alerts = [
        alert("r1", "owner", event={"TriggeringUserName": "alice"}),
        alert("r2", "owner", event={"TriggeringUserName": "bob"}),
    ]
    Recorder(KINDS, NoisePolicy(_settings(owners))).record(state, alerts, NOW)
    assert state.states() == {
        ("r1", "owner:alice@lab.example"): ("pending", None),
        ("r2", "owner"): ("dead", "unknown_owner"),
    }
    assert state.rows[alerts[0].dedup_key("owner:alice@lab.example")]["receiver_type"] == "email"


def test_without_a_policy_each_rules_receivers_and_nothing_suppressed() -> None:
    state = MemoryState(silences=[silence("s1", "run_id=r1")])
    Recorder(KINDS).record(state, [alert("r1", "mail", "owner")], NOW)
    assert state.states() == {
        ("r1", "mail"): ("pending", None),
        ("r1", "owner"): ("dead", "unknown_owner"),
    }


# -- the re-check at send time -------------------------------------------------------------------


def test_recheck_takes_members_silenced_or_inhibited_since_out_of_a_digest() -> None:
    counter = Counter("suppressed", "", ["reason"], registry=CollectorRegistry())
    team_x = {**OUTAGE, "target_matchers": ["team=x"]}
    noise = {**GROUPED_NOISE, "inhibit_rules": [team_x]}
    policy = NoisePolicy(_settings(noise), counter)
    state = MemoryState()
    members = [alert("r1"), alert("r2"), alert("r3", labels={"team": "x"})]
    Recorder(KINDS, policy).record(state, members, NOW)
    for row in state.rows.values():
        row["state"] = S.SENDING.value  # claimed
    claimed = [
        Notification.from_row(
            SimpleNamespace(**row, sent_at=None, last_error=None, lease_until=None)
        )
        for row in sorted(state.rows.values(), key=lambda row: row["run_id"])
    ]
    digest = dataclasses.replace(claimed[0], members=tuple(claimed))
    state.silences.append(silence("s1", "run_id=r2"))
    source = alert("outage", labels={"scope": "workspace"})
    policy.inhibitor.record(state, [(source, alert_labels(source))], NOW)
    later = NOW + timedelta(seconds=30)
    kept = recheck(state, policy, digest, later)
    assert kept is not None and [m.run_id for m in kept.members] == ["r1"]
    assert state.states() == {
        ("r1", "mail"): ("sending", None),
        ("r2", "mail"): ("silenced", "silence:s1"),
        ("r3", "mail"): ("inhibited", "inhibited:outage"),
    }
    assert counter.labels(reason="inhibited")._value.get() == 1
    assert recheck(state, policy, dataclasses.replace(digest, members=(claimed[1],)), later) is None
