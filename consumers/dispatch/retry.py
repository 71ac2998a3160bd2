"""The retry policy: what a failed or re-claimed attempt means next, as a decision.

Pure: values in (the attempt number, the notification's age, the failure, the limits, a
jitter factor), a decision out -- retry after a delay, or dead with a reason. Nothing here
reads a clock, draws a random number or touches the outbox, so every limit (max attempts,
max age, the backoff cap, the Retry-After cap) is testable as a plain function; the
delivery stage (consumers.dispatch.delivery) draws the jitter and records the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.config.receivers import NotifySettings
from consumers.model.errors import SendError

JITTER = (0.5, 1.0)  # the random factor on a backoff: a recovering server is not hit in lockstep


@dataclass(frozen=True, slots=True)
class Limits:
    """The notify settings that bound retrying (see consumers.settings.NotifySettings)."""

    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    max_age_s: float = 86_400.0
    max_attempts: int | None = None
    retry_after_max_s: float = 3600.0

    @classmethod
    def of(cls, notify: NotifySettings) -> Limits:
        return cls(
            backoff_initial_s=notify.backoff_initial_s,
            backoff_max_s=notify.backoff_max_s,
            max_age_s=notify.max_age_s,
            max_attempts=notify.max_attempts,
            retry_after_max_s=notify.retry_after_max_s,
        )


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after `delay_s` seconds."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Dead:
    """Give up: `reason` is the short label (metrics, the row), `detail` says why."""

    reason: str
    detail: str


def backoff(attempts: int, limits: Limits, jitter: float) -> float:
    """Exponential with jitter: the n-th failure waits initial * 2^(n-1), capped at
    backoff_max_s, times `jitter` (drawn from JITTER by the caller)."""
    base = limits.backoff_initial_s * 2 ** min(max(attempts - 1, 0), 32)
    return float(min(base, limits.backoff_max_s) * jitter)


def spent(attempts: int, age_s: float, last_error: str | None, limits: Limits) -> Dead | None:
    """Before an attempt: dead when a claimed notification is past its limits already.
    Earlier attempts then recorded no outcome (the process died mid-send, each time) and the
    lease brought it back. A first attempt always goes out, however old (after an outage)."""
    last = f"; last error: {last_error}" if last_error else ""
    limit = limits.max_attempts
    if limit is not None and attempts > limit:
        return Dead("attempts", f"gave up before attempt {attempts} (limit {limit}){last}")
    if attempts > 1 and age_s >= limits.max_age_s:
        return Dead("expired", f"gave up after {age_s:.0f}s, before attempt {attempts}{last}")
    return None


def after_failure(
    failure: SendError, attempts: int, age_s: float, limits: Limits, jitter: float
) -> Retry | Dead:
    """After attempt number `attempts` failed: dead if the failure cannot pass by retrying,
    or the notification is past its age or attempt limit; else a retry after the backoff,
    or after the receiver's Retry-After if that is longer (capped at retry_after_max_s)."""
    if not failure.retriable:
        return Dead(failure.reason, failure.detail)
    if age_s >= limits.max_age_s:
        return Dead("expired", f"gave up after {age_s:.0f}s: {failure}")
    limit = limits.max_attempts
    if limit is not None and attempts >= limit:
        return Dead("attempts", f"gave up after {attempts} attempts: {failure}")
    delay = backoff(attempts, limits, jitter)
    if failure.retry_after is not None:  # the receiver's wish, within reason
        delay = max(delay, min(failure.retry_after, limits.retry_after_max_s))
    return Retry(delay)
