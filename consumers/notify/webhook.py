"""Webhooks over aiohttp: signed, idempotent POSTs, classified failures.

Signature: `X-Runwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
The timestamp inside the signed text stops a captured request from being replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from email.utils import parsedate_to_datetime

import aiohttp

from consumers import redact
from consumers.errors import SendError
from consumers.notify.pagerduty import with_routing_key
from consumers.settings import WebhookReceiver

SIGNATURE_HEADER = "X-Runwatch-Signature"
TIMESTAMP_HEADER = "X-Runwatch-Timestamp"
RETRIABLE_STATUSES = frozenset({408, 425, 429})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,15}")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """The receiver's side: constant-time compare, and refuse stale timestamps.

    Whatever the header holds (it comes from whoever can reach the receiver), the answer is
    True or False, never an exception: `t` must be ASCII digits, each `v1` 64 lowercase hex
    digits (several `v1` are allowed, for a secret being rotated), other parts are ignored."""
    if not isinstance(header, str):
        return False
    timestamps: list[str] = []
    given: list[bytes] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value)
        elif key == "v1" and _HEX64.fullmatch(value):
            given.append(value.encode("ascii"))
    if len(timestamps) != 1 or not given or not _DIGITS.fullmatch(timestamps[0]):
        return False
    timestamp = int(timestamps[0])
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode("ascii")
    matches = [hmac.compare_digest(expected, value) for value in given]  # no early exit
    return any(matches)


def retry_after(value: str | None) -> float | None:
    """Seconds, or an HTTP date, as RFC 9110 allows."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class WebhookSender:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(self, receiver: WebhookReceiver, body: bytes, *, notification_id: str) -> None:
        if receiver.format == "pagerduty":
            body = with_routing_key(body, receiver.routing_key())
        headers = {
            **receiver.headers,
            "Content-Type": "application/json",
            "User-Agent": "runwatch",
            "Idempotency-Key": notification_id,
            "X-Runwatch-Notification-Id": notification_id,
        }
        secret = receiver.secret()
        if secret:
            timestamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = f"t={timestamp},v1={sign(secret, timestamp, body)}"
        await post(self._session, receiver.url, body, headers, receiver.timeout_s)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
) -> None:
    """One POST, its failure classified: 2xx is done; 408, 425, 429 and 5xx, timeouts and
    connection errors are retriable (honouring Retry-After); any other status is final.
    Failures name the endpoint by scheme, host and a hash, never the path (the path of a
    Slack or Teams webhook is its credential)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    where = redact.url(url)
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            status = response.status
            if 200 <= status < 300:
                return
            detail = (await response.text(errors="replace"))[:300]
            wait = retry_after(response.headers.get("Retry-After"))
    except TimeoutError as exc:
        raise SendError(
            "timeout", f"{where} gave no answer within {timeout_s}s", retriable=True
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        # aiohttp's texts can carry the URL: masked, and the endpoint named by its hash instead
        text = redact.redact(f"{type(exc).__name__}: {exc}")
        raise SendError("connection", f"{where}: {text}", retriable=True) from exc
    retriable = status in RETRIABLE_STATUSES or status >= 500
    raise SendError(
        f"http_{status}",
        f"{where} answered {status}: {redact.redact(detail)}",
        retriable=retriable,
        retry_after=wait,
    )
