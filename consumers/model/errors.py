"""The one root exception: callers branch on `retriable`, never on the concrete class alone."""

from __future__ import annotations


class RunwatchError(Exception):
    """Base of every error runwatch raises on purpose.

    `retriable` tells the caller whether doing the same thing again later can succeed
    (a broker or database that is down) or never will (malformed input, a bad config).
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(RunwatchError):
    """A configuration value is missing or wrong; `key` is its dotted path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class DecodeError(RunwatchError):
    """A Kafka message is not a run event; `reason` is a short label for metrics and headers."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StoreError(RunwatchError):
    """The store could not be reached or written; the batch is retried, never committed."""

    retriable = True


class SchemaVersionError(RunwatchError):
    """The database schema is not the one this build expects."""


class BrokerError(RunwatchError):
    """Kafka could not be reached or refused a request."""

    retriable = True


class SendError(RunwatchError):
    """A notification could not be delivered. `reason` is a short label (metrics, the
    notification row); `retry_after` is the receiver's own Retry-After, in seconds."""

    def __init__(
        self, reason: str, detail: str, *, retriable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}", retriable=retriable)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class TemplateError(SendError):
    """A template failed to render (syntax, undefined variable, sandbox violation): sending
    again cannot help, so the notification goes dead with this reason."""

    def __init__(self, detail: str) -> None:
        super().__init__("template", detail, retriable=False)


class RuleError(RunwatchError):
    """A rule file is invalid; the message names file, line, rule and field."""

    def __init__(
        self, file: str, line: int | None, rule: str | None, field: str | None, message: str
    ) -> None:
        where = f"{file}:{line}" if line else file
        parts = [where] + [
            p
            for p in (f"rule {rule!r}" if rule else None, f"field {field!r}" if field else None)
            if p
        ]
        super().__init__(f"{', '.join(parts)}: {message}")
        self.file, self.line, self.rule, self.field = file, line, rule, field


class RunStateError(RunwatchError):
    """A run lifecycle call the run's state does not allow (completing a finished run)."""


class PropertyConflictError(RunwatchError):
    """Properties are write-once: the same value again is fine, another value is this."""

    def __init__(self, run_id: str, key: str, current: str, wanted: str) -> None:
        super().__init__(
            f"run {run_id}: property {key!r} is already {current!r} and cannot become "
            f"{wanted!r} (properties are write-once; use a tag for a value that changes)"
        )
        self.run_id, self.key, self.current, self.wanted = run_id, key, current, wanted


class RunNotFoundError(RunwatchError):
    """The run is not in the store (unknown id, or `runwatch serve` has not stored it)."""


class StoreLagError(RunwatchError):
    """The store has not caught up with changes this process published: the consumer is
    behind or not running. Reading again later can succeed."""

    retriable = True
