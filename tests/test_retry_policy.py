"""The retry policy (consumers/dispatch/retry.py) as plain functions: a failure and the
limits in, a retry delay or dead out. The end-to-end behaviour (rows, mails, metrics) is in
test_dispatcher.py and test_hostile_receivers.py; these pin each limit on its own."""

from __future__ import annotations

import pytest

from consumers.config.settings import NotifySettings
from consumers.dispatch.retry import Dead, Limits, Retry, after_failure, backoff, spent
from consumers.model.errors import SendError, TemplateError

LIMITS = Limits(
    backoff_initial_s=1.0,
    backoff_max_s=60.0,
    max_age_s=3600.0,
    max_attempts=5,
    retry_after_max_s=600.0,
)


def refused(retry_after: float | None = None) -> SendError:
    return SendError("http_503", "service unavailable", retriable=True, retry_after=retry_after)


def test_limits_come_from_the_notify_settings() -> None:
    notify = NotifySettings(backoff_initial_s=2, max_attempts=3, retry_after_max_s=10)
    limits = Limits.of(notify)
    assert limits.backoff_initial_s == 2.0 and limits.max_attempts == 3
    assert limits.retry_after_max_s == 10.0 and limits.max_age_s == notify.max_age_s


def test_backoff_doubles_per_attempt_up_to_the_cap_times_the_jitter() -> None:
    assert [backoff(n, LIMITS, 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(3, LIMITS, 0.5) == 2.0
    assert backoff(0, LIMITS, 1.0) == 1.0  # never below the initial delay
    assert backoff(10**6, LIMITS, 1.0) == 60.0  # a huge attempt count does not overflow


def test_a_retriable_failure_is_retried_after_the_backoff() -> None:
    assert after_failure(refused(), 3, 10.0, LIMITS, 1.0) == Retry(4.0)
    assert after_failure(refused(), 3, 10.0, LIMITS, 0.5) == Retry(2.0)


def test_a_failure_that_retrying_cannot_fix_is_dead_with_its_own_reason() -> None:
    assert after_failure(TemplateError("undefined 'x'"), 1, 0.0, LIMITS, 1.0) == Dead(
        "template", "undefined 'x'"
    )
    refusal = SendError("http_400", "bad request", retriable=False)
    assert after_failure(refusal, 1, 0.0, LIMITS, 1.0) == Dead("http_400", "bad request")


def test_retry_after_lengthens_the_delay_within_its_cap_and_never_shortens_it() -> None:
    assert after_failure(refused(retry_after=120), 1, 0.0, LIMITS, 1.0) == Retry(120.0)
    assert after_failure(refused(retry_after=86_400), 1, 0.0, LIMITS, 1.0) == Retry(600.0)
    assert after_failure(refused(retry_after=0.1), 5 - 1, 0.0, LIMITS, 1.0) == Retry(8.0)


def test_the_attempt_limit_ends_retrying() -> None:
    assert isinstance(after_failure(refused(), 4, 0.0, LIMITS, 1.0), Retry)
    dead = after_failure(refused(), 5, 0.0, LIMITS, 1.0)
    assert dead == Dead("attempts", "gave up after 5 attempts: http_503: service unavailable")
    unlimited = Limits(max_attempts=None)
    assert isinstance(after_failure(refused(), 1000, 0.0, unlimited, 1.0), Retry)


def test_the_age_limit_ends_retrying() -> None:
    assert isinstance(after_failure(refused(), 1, 3599.0, LIMITS, 1.0), Retry)
    dead = after_failure(refused(), 1, 3600.0, LIMITS, 1.0)
    assert dead == Dead("expired", "gave up after 3600s: http_503: service unavailable")


@pytest.mark.parametrize("age", [0.0, 10 * 86_400.0])
def test_a_first_attempt_always_goes_out_however_old(age: float) -> None:
    assert spent(1, age, None, LIMITS) is None


def test_a_reclaimed_notification_past_its_limits_is_dead_before_the_attempt() -> None:
    """Earlier attempts recorded no outcome (the process died mid-send) and the lease
    brought the row back: the policy ends it before sending again."""
    assert spent(5, 0.0, None, LIMITS) is None  # the fifth attempt is allowed
    assert spent(6, 0.0, "timeout", LIMITS) == Dead(
        "attempts", "gave up before attempt 6 (limit 5); last error: timeout"
    )
    assert spent(2, 3600.0, None, LIMITS) == Dead(
        "expired", "gave up after 3600s, before attempt 2"
    )
    assert spent(2, 3599.0, None, LIMITS) is None
