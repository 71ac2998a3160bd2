"""The `console:` settings section, and the one combination it refuses: a console that
anyone on the network could use (it creates silences and re-sends notifications)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from consumers.config.service import is_loopback


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Off by default: the console writes (silences, retries), so it is opted into.
    enabled: bool = False
    # How long a login through the console's form lasts (browsers that send basic auth
    # themselves need none).
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # The failures page shows the newest this many failed runs, grouped.
    failures_shown: int = Field(default=200, ge=10, le=2000)


def refusal(enabled: bool, listen_host: str, has_auth: bool) -> str | None:
    """Why this console must not start, or None: without `metrics.auth` it may listen on
    loopback only (as the metrics endpoint warns, but here the pages can change things)."""
    if not enabled or has_auth:
        return None
    if is_loopback(listen_host):
        return None
    return (
        f"the console on {listen_host or '0.0.0.0'} needs metrics.auth (a bearer token or "
        "username/password): it creates silences and re-sends notifications; or listen on "
        "127.0.0.1"
    )
