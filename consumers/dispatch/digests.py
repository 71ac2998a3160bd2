"""What dispatch does differently for noise control: a group's claimed rows become one
digest (`bundle`), digests of a group thread together (`thread_key`), and `owner:<address>`
receivers are built on the fly (`resolve_receiver`). The digest and storm template contexts
are in consumers/dispatch/context.py with every other context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from consumers.config.receivers import EmailReceiver, ReceiverSettings
from consumers.config.settings import Settings
from consumers.model.notifications import Notification
from consumers.model.receivers import owner_address


def bundle(claimed: Sequence[Notification]) -> list[Notification]:
    """One Notification per group (its oldest row, carrying every row as `members`)."""
    groups: dict[str, list[Notification]] = {}
    out: list[Notification | str] = []
    for notification in claimed:
        key = notification.group_key
        if key is None:
            out.append(notification)
        else:
            if key not in groups:
                groups[key] = []
                out.append(key)
            groups[key].append(notification)
    result = []
    for item in out:
        if isinstance(item, str):
            members = sorted(groups[item], key=lambda m: (m.event_time, m.run_id, m.id))
            result.append(dataclasses.replace(members[0], members=tuple(members)))
        else:
            result.append(item)
    return result


def thread_key(notification: Notification) -> str:
    """Digests of one group thread together, each with its own Message-ID."""
    return notification.group_key or notification.fingerprint


def resolve_receiver(settings: Settings, name: str) -> ReceiverSettings | None:
    address = owner_address(name)
    if address is not None:
        return ReceiverSettings(email=EmailReceiver(to=[address]))
    return settings.receivers.get(name)
