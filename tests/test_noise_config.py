"""Pure logic of noise control: matchers, time intervals, the routing walk, config errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from consumers.config.noise import NoiseSettings, OwnerSettings
from consumers.config.settings import load_settings
from consumers.model.errors import ConfigError
from consumers.model.matchers import Matcher
from consumers.model.timeintervals import TimeEntry, active
from consumers.noise.owners import resolve
from consumers.noise.policy import NoisePolicy
from consumers.noise.routing import Router


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("workspace=ws-a", {"workspace": "ws-a"}, True),
        ("workspace=ws-a", {"workspace": "ws-ab"}, False),
        ('workspace="ws a"', {"workspace": "ws a"}, True),
        ("workspace!=ws-a", {}, True),
        ("severity=~0|1", {"severity": "1"}, True),
        ("severity=~0|1", {"severity": "10"}, False),  # anchored
        ("experiment!~nightly-.*", {"experiment": "nightly-train"}, False),
        ("tags.team=", {}, True),  # a missing label is ""
    ],
)
def test_matchers(text: str, labels: dict[str, str], expected: bool) -> None:
    assert Matcher.parse(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["workspace", "=x", "a=~(", "a!~["])
def test_bad_matchers_name_the_syntax(text: str) -> None:
    with pytest.raises(ValueError, match="matcher"):
        Matcher.parse(text)


def test_time_entry_ranges_and_month_ends() -> None:
    entry = TimeEntry.model_validate(
        {"days_of_month": ["-1"], "months": ["february"], "location": "Asia/Tokyo"}
    )
    # 2027-02-27 15:30 UTC is 2027-02-28 00:30 in Tokyo: the last day of February
    assert active((entry,), datetime(2027, 2, 27, 15, 30, tzinfo=UTC))
    assert not active((entry,), datetime(2027, 2, 27, 14, 30, tzinfo=UTC))
    night = TimeEntry.model_validate({"times": [{"start_time": "22:00", "end_time": "24:00"}]})
    assert active((night,), datetime(2026, 1, 1, 23, 59, tzinfo=UTC))
    assert not active((night,), datetime(2026, 1, 1, 0, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"location": "Mars/Olympus"}, "unknown time zone"),
        ({"times": [{"start_time": "9:00", "end_time": "17:00"}]}, "HH:MM"),
        ({"weekdays": ["funday"]}, "unknown value"),
        ({"days_of_month": ["32"]}, "out of range"),
    ],
)
def test_bad_time_entries(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TimeEntry.model_validate(data)


@pytest.mark.parametrize(
    ("noise", "message"),
    [
        ({"defaults": {"mute_time_intervals": ["nights"]}}, "unknown time interval 'nights'"),
        ({"route": {"routes": [{"matchers": ["a=~("]}]}}, "bad regex"),
        ({"route": {"receiver": "x", "group_wait": "30"}}, "expected a duration"),
        ({"owners": {"addresses": {"al": "not-an-address"}}}, "not a plain email address"),
        ({"storm": {"max_per_minut": 3}}, "Extra inputs"),
    ],
)
def test_config_errors_are_caught_at_load(noise: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NoiseSettings.model_validate(noise)


def test_routes_must_name_configured_receivers() -> None:
    policy = NoisePolicy(NoiseSettings.model_validate({"route": {"receiver": "nobody"}}))
    with pytest.raises(ConfigError, match="nobody"):
        policy.check_receivers({"mail"})
    NoisePolicy(NoiseSettings.model_validate({"route": {"receiver": "owner"}})).check_receivers(
        set()
    )


TREE = {
    "route": {
        "receiver": "default",
        "group_by": ["workspace"],
        "group_wait": "1m",
        "routes": [
            {"matchers": ["severity=0"], "receiver": "pager", "continue": True},
            {
                "matchers": ["workspace=~ws-.*"],
                "receiver": "teams",
                "routes": [{"matchers": ["experiment=nightly"], "receiver": "nightly"}],
            },
            {"matchers": ["workspace=ws-a"], "receiver": "never"},  # first match stops
        ],
    },
    "defaults": {"group_by": ["rule"]},
}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"severity": "0", "workspace": "ws-a"}, ["rule-r", "pager", "teams"]),
        ({"severity": "3", "workspace": "other"}, ["rule-r", "default"]),
        ({"severity": "0", "workspace": "other"}, ["rule-r", "pager"]),
        ({"workspace": "ws-a", "experiment": "nightly"}, ["rule-r", "nightly"]),
    ],
)
def test_routing_walk(labels: dict[str, str], expected: list[str]) -> None:
    settings = NoiseSettings.model_validate(TREE)
    targets = Router(settings.route, settings.defaults).targets(("rule-r",), labels)
    assert [t.receiver for t in targets] == expected
    by_name = {t.receiver: t for t in targets}
    assert by_name["rule-r"].group_by == ("rule",) and by_name["rule-r"].route == "rule"
    for name in expected[1:]:
        assert by_name[name].group_by == ("workspace",)  # inherited from the root
        assert by_name[name].group_wait == 60.0


def test_owner_addresses() -> None:
    owners = OwnerSettings(
        addresses={"Alice Smith": "alice@lab.example"}, domain="corp.example", allow="[a-z]+"
    )
    assert resolve(owners, "Alice Smith").receiver == "owner:alice@lab.example"
    assert resolve(owners, "bob").receiver == "owner:bob@corp.example"
    assert resolve(owners, "bob\r\nBcc: x@evil.example").receiver == "owner"
    assert resolve(owners, None).receiver == "owner"
    assert resolve(OwnerSettings(), "bob").receiver == "owner"


def test_the_service_config_reads_noise_and_names_a_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "runwatch.yaml"
    path.write_text(
        "receivers:\n  pager: {webhook: {url: 'http://127.0.0.1:9/p'}}\n"
        "noise:\n  route:\n    routes:\n      - {matchers: ['severity=0'], receiver: pager}\n"
        "  storm: {max_per_minute: 5}\n"
    )
    settings = load_settings(path)
    assert settings.noise.storm.max_per_minute == 5
    path.write_text("noise:\n  storm: {max_per_minute: 0}\n")
    with pytest.raises(ConfigError, match=r"noise\.storm\.max_per_minute"):
        load_settings(path)
