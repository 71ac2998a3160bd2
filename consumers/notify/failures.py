"""What delivering one notification raised, as a SendError: the dispatcher's one boundary
(consumers.dispatch.delivery) records every failure through this, so whatever goes wrong -- a
receiver, a template, a store read, a bug -- ends in a retry with backoff or `dead` with a
reason, never in a row left `sending` for the lease to send again.

Reasons are metric label values (runwatch_notification_failures_total): a fixed few here,
the exception's type and text go to the detail (redacted and cut when stored).
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from consumers.model.errors import RunwatchError, SendError, StoreError

_DETAIL_CHARS = 1000


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS]


def as_send_error(exc: Exception) -> SendError:
    """A SendError as it is; a store error (ours or SQLAlchemy's) `store`, retried; another
    runwatch error keeps its `retriable`; anything else is `internal` and retried, since it
    may pass (the attempts or the age limit end it if it does not)."""
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, StoreError | SQLAlchemyError):
        return SendError("store", _text(exc), retriable=True)
    if isinstance(exc, RunwatchError):
        return SendError("internal", _text(exc), retriable=exc.retriable)
    return SendError("internal", _text(exc), retriable=True)
