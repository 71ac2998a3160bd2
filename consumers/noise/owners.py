"""The `owner` receiver, resolved: a producer chooses the run's TriggeringUserName, so the
name picks a recipient only through the operator's lists (noise.owners, consumers/noise/
config.py). Pure: settings and a user name in, a receiver name out.

    addresses[user]                          -> owner:<that address>
    allowed (allow / allow_file), plain name -> owner:<user>@<domain>
    anyone else, or no user                  -> the fallback receiver, or `owner` (dead,
                                                unknown_owner); counted either way
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.config.noise import OwnerSettings
from consumers.model.receivers import OWNER, is_local_part, owner_receiver


@dataclass(frozen=True, slots=True)
class OwnerRoute:
    receiver: str  # owner:<address>, the fallback receiver, or `owner`
    unknown: bool  # not a mapped or allowed owner (runwatch_owner_unknown_total)


def resolve(owners: OwnerSettings, user: str | None) -> OwnerRoute:
    address: str | None = None
    if user:
        if user in owners.addresses:
            address = owners.addresses[user]
        elif owners.domain and is_local_part(user) and owners.allowed(user):
            address = f"{user}@{owners.domain}"
    receiver = owner_receiver(address)  # the final address is checked again there
    if receiver != OWNER:
        return OwnerRoute(receiver, unknown=False)
    return OwnerRoute(owners.fallback or OWNER, unknown=True)
