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
