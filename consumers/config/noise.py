"""The `noise:` section of the service config: routing tree, inhibition, time intervals,
storm control and owner routing. Validated at start-up like every other section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from consumers.model.durations import Duration
from consumers.model.matchers import parse_all
from consumers.model.receivers import OWNER, is_address, is_domain, is_local_part
from consumers.model.timeintervals import TimeEntry


def _matchers(values: tuple[str, ...]) -> tuple[str, ...]:
    parse_all(values)  # a bad matcher is a config error at start-up
    return values


Matchers = Annotated[tuple[str, ...], AfterValidator(_matchers)]


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
    """Whom the `owner` receiver may mail (consumers/noise/owners.py resolves it). A user
    name in `addresses` gets that address; one that `allow` (a regex over the whole name)
    or `allow_file` (one name a line, `#` comments; read at start-up) allows gets
    `user@domain`. Anyone else -- including whatever a producer makes up -- goes to the
    `fallback` receiver, or is recorded dead (unknown_owner). `domain` alone (any name at
    the domain) is refused: a producer could mail `all-staff@` that way."""

    addresses: dict[str, str] = Field(default_factory=dict)
    domain: str | None = None
    allow: str | None = None
    allow_file: Path | None = None
    fallback: str | None = None
    _allow: re.Pattern[str] | None = PrivateAttr(default=None)
    _listed: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @model_validator(mode="after")
    def _valid(self) -> OwnerSettings:
        for user, address in self.addresses.items():
            if not is_address(address):
                raise ValueError(f"owners.addresses.{user}: not a plain email address: {address!r}")
        if self.fallback == OWNER:
            raise ValueError("owners.fallback: must be a configured receiver, not `owner`")
        allowing = self.allow is not None or self.allow_file is not None
        if self.domain is not None:
            if not is_domain(self.domain):
                raise ValueError(f"owners.domain: not a mail domain: {self.domain!r}")
            if not allowing:
                raise ValueError(
                    "owners.domain mails only the user names that owners.allow or "
                    "owners.allow_file allow: give one of them (any name a producer sends "
                    "would be mailed otherwise)"
                )
        elif allowing:
            raise ValueError("owners.allow and owners.allow_file need owners.domain")
        if self.allow is not None:
            try:
                self._allow = re.compile(self.allow)
            except re.error as exc:
                raise ValueError(
                    f"owners.allow: not a regular expression: {self.allow!r}: {exc}"
                ) from None
        if self.allow_file is not None:
            self._listed = _read_names(self.allow_file)
        return self

    def allowed(self, user: str) -> bool:
        """Listed in allow_file or matched whole by allow (the caller checks it is plain)."""
        if user in self._listed:
            return True
        return self._allow is not None and self._allow.fullmatch(user) is not None


def _read_names(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"owners.allow_file: cannot read {path}: {exc}") from None
    names = set()
    for number, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not is_local_part(name):
            raise ValueError(
                f"owners.allow_file: {path.name}:{number}: not a plain user name: {name!r}"
            )
        names.add(name)
    return frozenset(names)


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
