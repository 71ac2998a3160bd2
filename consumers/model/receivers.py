"""Receiver names. A receiver is named in the config (`receivers:`), except `owner`: the run's
TriggeringUserName. Routing (consumers/noise/owners.py) turns `owner` into `owner:<address>`
(an email receiver made on the fly), so the outbox row says whom it went to; a run whose user
is not an allowed owner goes to `noise.owners.fallback`, or keeps the bare `owner` and is
recorded dead (unknown_owner). This is the one place that spells it.

An owner's address is built from a name a producer chose, so it must be plain: a dot-atom
local part of ASCII letters, digits and `_+-` and a domain of ASCII labels. `%`, `!`,
quotes, a second `@`, whitespace, control characters and look-alike letters never pass,
whatever the config allows: checked when the row is made and again when it is sent.
"""

from __future__ import annotations

import re

OWNER = "owner"
_PREFIX = f"{OWNER}:"

_LOCAL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*(?:\.[A-Za-z0-9_+-]+)*")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
_MAX_LOCAL = 64
_MAX_DOMAIN = 253


def is_local_part(text: str) -> bool:
    """A plain user name: what may stand left of the `@` of an owner's address."""
    return len(text) <= _MAX_LOCAL and _LOCAL_PART.fullmatch(text) is not None


def is_domain(text: str) -> bool:
    return len(text) <= _MAX_DOMAIN and _DOMAIN.fullmatch(text) is not None


def is_address(text: str) -> bool:
    local, at, domain = text.partition("@")
    return bool(at) and is_local_part(local) and is_domain(domain)


def owner_receiver(address: str | None) -> str:
    """The receiver name for the run's owner: `owner:<address>`, or `owner` without a plain
    address (recorded dead, unknown_owner)."""
    return _PREFIX + address if address and is_address(address) else OWNER


def owner_address(name: str) -> str | None:
    """The address of an `owner:<address>` receiver; None for any other name, and for an
    address that is not plain (a row written before addresses were checked)."""
    if name.startswith(_PREFIX):
        address = name[len(_PREFIX) :]
        if is_address(address):
            return address
    return None
