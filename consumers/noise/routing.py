"""Which receivers get an alert, and with which grouping and time options.

Two sources, used together: the receivers a rule names in `notify:` (with `noise.defaults`),
and the optional routing tree `noise.route`. The tree is walked like Alertmanager's: an alert
enters the root; at each node the children are tried in order and the alert descends into the
first that matches (and also into later ones while the matched child has `continue: true`);
a node no child took it from is where it lands. Children inherit unset options from their
parent. A receiver reached both ways keeps the route's options.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.config.noise import (
    DEFAULT_GROUP_INTERVAL,
    DEFAULT_GROUP_WAIT,
    DEFAULT_REPEAT_INTERVAL,
    Route,
    Timing,
)
from consumers.model.matchers import Matcher, match_all, parse_all


@dataclass(frozen=True, slots=True)
class Target:
    """One receiver of one alert, with the options of the route that chose it."""

    receiver: str
    route: str  # "rule" for per-rule receivers, else the node's path ("route.0.1")
    group_by: tuple[str, ...] = ()
    group_wait: float = DEFAULT_GROUP_WAIT
    group_interval: float = DEFAULT_GROUP_INTERVAL
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL
    mute: tuple[str, ...] = ()
    active: tuple[str, ...] = ()


def _merge(parent: Timing, child: Timing) -> Timing:
    values = {
        name: getattr(child, name) if getattr(child, name) is not None else getattr(parent, name)
        for name in Timing.model_fields
    }
    return Timing.model_construct(**values)  # already validated


def target(receiver: str, route: str, timing: Timing) -> Target:
    return Target(
        receiver=receiver,
        route=route,
        group_by=timing.group_by or (),
        group_wait=DEFAULT_GROUP_WAIT if timing.group_wait is None else timing.group_wait,
        group_interval=(
            DEFAULT_GROUP_INTERVAL if timing.group_interval is None else timing.group_interval
        ),
        repeat_interval=(
            DEFAULT_REPEAT_INTERVAL if timing.repeat_interval is None else timing.repeat_interval
        ),
        mute=timing.mute_time_intervals or (),
        active=timing.active_time_intervals or (),
    )


@dataclass(frozen=True, slots=True)
class _Node:
    path: str
    receiver: str | None
    matchers: tuple[Matcher, ...]
    cont: bool
    timing: Timing
    children: tuple[_Node, ...]


def _compile(route: Route, parent: Timing, path: str, receiver: str | None) -> _Node:
    timing = _merge(parent, route)
    mine = route.receiver or receiver
    children = tuple(
        _compile(child, timing, f"{path}.{i}", mine) for i, child in enumerate(route.routes)
    )
    return _Node(path, mine, parse_all(route.matchers), route.continue_, timing, children)


class Router:
    def __init__(self, route: Route | None, defaults: Timing) -> None:
        self._defaults = defaults
        self._root = None if route is None else _compile(route, Timing(), "route", None)

    def receivers(self) -> set[str]:
        """Every receiver the tree names (checked against the config at start-up)."""
        found: set[str] = set()
        stack = [self._root] if self._root is not None else []
        while stack:
            node = stack.pop()
            if node.receiver is not None:
                found.add(node.receiver)
            stack.extend(node.children)
        return found

    def targets(self, rule_receivers: tuple[str, ...], labels: dict[str, str]) -> list[Target]:
        chosen = {r: target(r, "rule", self._defaults) for r in rule_receivers}
        if self._root is not None and match_all(self._root.matchers, labels):
            for node in self._walk(self._root, labels):
                if node.receiver is not None:
                    chosen[node.receiver] = target(node.receiver, node.path, node.timing)
        return list(chosen.values())

    def _walk(self, node: _Node, labels: dict[str, str]) -> list[_Node]:
        landed: list[_Node] = []
        for child in node.children:
            if not match_all(child.matchers, labels):
                continue
            landed.extend(self._walk(child, labels))
            if not child.cont:
                break
        return landed or [node]
