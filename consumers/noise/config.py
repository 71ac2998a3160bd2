"""The `noise:` section of the service config: routing tree, inhibition, time intervals,
storm control and owner routing. Validated at start-up like every other section."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from consumers.model.matchers import parse_all
from consumers.noise.timeintervals import TimeEntry
from consumers.rules.model import parse_duration

_ADDRESS = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9._%+-]+$")


def _matchers(values: tuple[str, ...]) -> tuple[str, ...]:
    parse_all(values)  # a bad matcher is a config error at start-up
    return values


Matchers = Annotated[tuple[str, ...], AfterValidator(_matchers)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Timing(_Section):
    """Grouping and time-interval options; on a route, an unset one is inherited."""

    group_by: tuple[str, ...] | None = None
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    mute_time_intervals: tuple[str, ...] | None = None
    active_time_intervals: tuple[str, ...] | None = None


class Route(Timing):
    receiver: str | None = None
    matchers: Matchers = ()
    continue_: bool = Field(default=False, alias="continue")
    routes: tuple[Route, ...] = ()


class InhibitRule(_Section):
    """While an alert matching `source_matchers` was raised within `for`, alerts matching
    `target_matchers` with the same values of the `equal` labels are not sent."""

    name: str
    source_matchers: Matchers = Field(min_length=1)
    target_matchers: Matchers = Field(min_length=1)
    equal: tuple[str, ...] = ()
    for_: Duration = Field(default=3600.0, alias="for", gt=0)


class StormSettings(_Section):
    """More than `max_per_minute` notifications to one receiver in one (UTC) minute: the
    rest are recorded as `storm` and one summary is sent at the end of that minute."""

    max_per_minute: int | None = Field(default=None, ge=1)


class OwnerSettings(_Section):
    """Where the `owner` receiver sends: the address mapped to the run's TriggeringUserName,
    else `user@domain` when `domain` is set and the user name is a plain local part."""

    addresses: dict[str, str] = Field(default_factory=dict)
    domain: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> OwnerSettings:
        for user, address in self.addresses.items():
            if not _ADDRESS.match(address):
                raise ValueError(f"owners.addresses.{user}: not an email address: {address!r}")
        return self

    def address(self, user: str | None) -> str | None:
        if not user:
            return None
        if user in self.addresses:
            return self.addresses[user]
        if self.domain and _LOCAL_PART.match(user):
            return f"{user}@{self.domain}"
        return None


DEFAULT_GROUP_WAIT = 30.0
DEFAULT_GROUP_INTERVAL = 300.0
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0


class NoiseSettings(_Section):
    defaults: Timing = Timing()  # for the receivers a rule names in `notify:`
    route: Route | None = None
    inhibit_rules: tuple[InhibitRule, ...] = ()
    time_intervals: dict[str, tuple[TimeEntry, ...]] = Field(default_factory=dict)
    storm: StormSettings = StormSettings()
    owners: OwnerSettings = OwnerSettings()

    @model_validator(mode="after")
    def _names(self) -> NoiseSettings:
        def check(timing: Timing, where: str) -> None:
            for name in (timing.mute_time_intervals or ()) + (timing.active_time_intervals or ()):
                if name not in self.time_intervals:
                    raise ValueError(f"{where}: unknown time interval {name!r}")

        def walk(route: Route, where: str) -> None:
            check(route, where)
            for i, child in enumerate(route.routes):
                walk(child, f"{where}.routes[{i}]")

        check(self.defaults, "noise.defaults")
        if self.route is not None:
            walk(self.route, "noise.route")
        names = [rule.name for rule in self.inhibit_rules]
        if len(set(names)) != len(names):
            raise ValueError("noise.inhibit_rules: names must be unique")
        return self
