"""PagerDuty Events API v2 (the `pagerduty` webhook format): rule severities as PagerDuty's,
and the routing key added to the rendered event at send time.

The body itself is a template (templates/webhook/pagerduty.json.j2): a `trigger` whose
`dedup_key` is the alert's fingerprint, so repeats of one alert update one incident and a
stateful alert's resolution (`resolve`, same key) closes it.
"""

from __future__ import annotations

import orjson

from consumers.model.errors import SendError

# runwatch severity (0-4) -> payload.severity. PagerDuty has four; Sev4 (verbose) is info.
SEVERITIES = {0: "critical", 1: "error", 2: "warning", 3: "info", 4: "info"}


def severity(level: int) -> str:
    return SEVERITIES[level]


def with_routing_key(body: bytes, routing_key: str | None) -> bytes:
    """Templates never see the routing key, and neither do the logs (a failure's detail is
    PagerDuty's answer, not the request)."""
    if not routing_key:
        raise SendError(
            "routing_key",
            "no PagerDuty routing key (routing_key_env / routing_key_file)",
            retriable=False,
        )
    document = orjson.loads(body)
    document["routing_key"] = routing_key
    return orjson.dumps(document)
