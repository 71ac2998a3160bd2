"""Receiver names. A receiver is named in the config (`receivers:`), except `owner`: the run's
TriggeringUserName. Routing turns `owner` into `owner:<address>` (an email receiver made on
the fly), so the outbox row says whom it went to; a run whose user has no address keeps the
bare `owner` and is recorded dead (unknown_receiver). This is the one place that spells it.
"""

from __future__ import annotations

OWNER = "owner"
_PREFIX = f"{OWNER}:"


def owner_receiver(address: str | None) -> str:
    """The receiver name for the run's owner: `owner:<address>`, or `owner` without one."""
    return _PREFIX + address if address else OWNER


def owner_address(name: str) -> str | None:
    """The address of an `owner:<address>` receiver; None for any other name."""
    if name.startswith(_PREFIX) and len(name) > len(_PREFIX):
        return name[len(_PREFIX) :]
    return None
