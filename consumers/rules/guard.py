"""The isolation boundary of rule evaluation: no rule can stop the service.

A rule is user input run against producer input: `floor(to_number(properties.loss))` meets
`loss: "1e999"` and raises OverflowError; a new rule kind has a bug. Whatever is raised, it
is that rule's error on that event (or that tick), never the service's: it is counted
(`runwatch_rule_errors_total{rule}`), logged once per rule per interval (a rule failing on
every event must not flood the log), the rule is skipped for that event, the event is still
stored and every other rule is still evaluated.

The boundary sits where rules are dispatched, not in each kind: `RuleSet.evaluate` runs each
per-event rule inside it, `Evaluation` each scheduled rule's observe and evaluate (and the
run tracker those rules share), either through `RuleGuard.call` or, on the per-event hot
paths, an inline `try` that hands the exception to `RuleGuard.failed`. The compiled
conditions the kinds judge runs with (`engine.Matcher`) cannot be built without a guard, so
one run that makes a condition raise cannot stop a rule judging the others. A new kind
plugged into `kinds.BUILDERS` is inside the boundary without doing anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

LOG_EVERY_S = 300.0


class RuleGuard:
    """Runs rule work, turning any exception into a counted, rate-limited rule error.

    One guard is shared by every rule set a service loads (a reload keeps the counts and
    the log rate) and by the threads evaluating them (ingest and the scheduler)."""

    def __init__(
        self,
        count: Callable[[str], None] | None = None,
        *,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._log_every = log_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self.errors: Counter[str] = Counter()  # rule -> errors since the guard was made
        self._logged: dict[str, float] = {}  # rule -> when its last error was logged
        self._unlogged: Counter[str] = Counter()  # rule -> errors since then, not logged

    def call(self, rules: str | tuple[str, ...], work: Callable[..., T], *args: Any) -> T | None:
        """`work(*args)`, or None if it raised: then each of `rules` (the rules the work was
        for) has one error."""
        try:
            return work(*args)
        except Exception as exc:  # the boundary: anything a rule raises stops at this line
            self.failed(rules, exc)
            return None

    def failed(self, rules: str | tuple[str, ...], exc: BaseException) -> None:
        for rule in (rules,) if isinstance(rules, str) else rules:
            self._failed(rule, exc)

    def _failed(self, rule: str, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self.errors[rule] += 1
            last = self._logged.get(rule)
            due = last is None or now - last >= self._log_every
            if due:
                self._logged[rule] = now
                quiet, self._unlogged[rule] = self._unlogged[rule], 0
            else:
                self._unlogged[rule] += 1
        if self._count is not None:
            self._count(rule)
        if not due:
            return
        if last is None:  # the first one with its traceback: what a rule author needs
            log.warning(
                "rule %r failed on an event and is skipped for it (other rules go on): %s",
                rule,
                _brief(exc),
                exc_info=exc,
                extra={"rule": rule},
            )
        else:
            log.warning(
                "rule %r failed again: %d more errors in the last %.0fs; latest %s",
                rule,
                quiet + 1,
                now - last,
                _brief(exc),
                extra={"rule": rule},
            )


def _brief(exc: BaseException, limit: int = 300) -> str:
    """The exception type and the start of its text (which may quote the event's data)."""
    text = str(exc)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}"
