"""Webhooks over aiohttp: signed, idempotent POSTs, classified failures.

Signature: `X-Runwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
The timestamp inside the signed text stops a captured request from being replayed later.

A receiver is not trusted to answer sanely: a success's body is never read, an error's only
up to BODY_CAP bytes (the rest is dropped with the connection), redirects are not followed,
a status line or headers aiohttp's parser refuses (longer than 8190 bytes a line or field,
more than 128 headers, not HTTP) are `bad_response`, and a Retry-After that is not RFC 9110
is ignored (the dispatcher caps one that is: notify.retry_after_max_s).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

import aiohttp

from consumers.config.receivers import WebhookReceiver
from consumers.model import redact
from consumers.model.errors import SendError
from consumers.notify.pagerduty import with_routing_key

SIGNATURE_HEADER = "X-Runwatch-Signature"
TIMESTAMP_HEADER = "X-Runwatch-Timestamp"
RETRIABLE_STATUSES = frozenset({408, 425, 429})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,15}")
_DELAY_SECONDS = re.compile(r"[0-9]+")  # ASCII: str.isdigit() takes "²", fullwidth digits
BODY_CAP = 4096  # bytes of an error body read, at most
_DETAIL_CHARS = 300  # of which the error text keeps this many characters


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


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 10.2.3): delay-seconds (ASCII
    digits), or an HTTP-date in any of its three forms (IMF-fixdate, RFC 850, asctime, the
    last read as GMT); a date in the past is 0. Anything else is None, and the caller keeps
    its own backoff. Not capped here (a huge number is a huge float, or inf): the dispatcher
    caps every receiver's wish with notify.retry_after_max_s."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)  # float(): 5,000 digits make inf, where int() would refuse them
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _location(base: str, value: str) -> str:
    """Where a redirect pointed, shown like a webhook URL (its path may be a credential)."""
    try:
        return redact.url(urljoin(base, value))
    except ValueError:  # not a URL at all
        return redact.url(value)


async def _head(response: aiohttp.ClientResponse) -> str:
    """The first BODY_CAP bytes of the body, however much the receiver sends."""
    chunks: list[bytes] = []
    size = 0
    while size < BODY_CAP:
        chunk = await response.content.read(BODY_CAP - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


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
    """One POST, its failure classified: 2xx is done; 408, 425, 429 and 5xx, timeouts,
    connection errors and responses no parser takes are retriable (honouring a capped
    Retry-After); a redirect is final (never followed), as is any other status. A hostile
    peer costs at most a small read: a 2xx body is never read, an error body only its head.
    Failures name the endpoint by scheme, host and a hash, never the path (the path of a
    Slack or Teams webhook is its credential); the name is made only for a failure (a hash
    per post was a visible share of a webhook burst's loop)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            status = response.status
            if 200 <= status < 300:
                if not response.content.is_eof():
                    response.close()  # a body we do not read: drop it with the connection
                return
            wait = retry_after(response.headers.get("Retry-After"))
            if 300 <= status < 400:
                location = _location(url, response.headers.get("Location", ""))
                detail = f"redirects are not followed (Location: {location})"
            else:
                detail = redact.redact((await _head(response))[:_DETAIL_CHARS])
            if not response.content.is_eof():
                response.close()  # the rest of the body, unread, goes with the connection
    except TimeoutError as exc:
        raise SendError(
            "timeout", f"{redact.url(url)} gave no answer within {timeout_s}s", retriable=True
        ) from exc
    except aiohttp.ClientResponseError as exc:
        # raised before any response: a status line or headers the parser refuses
        text = redact.redact(f"{type(exc).__name__}: {exc}")
        raise SendError("bad_response", f"{redact.url(url)}: {text}", retriable=True) from exc
    except (aiohttp.ClientError, OSError) as exc:
        # aiohttp's texts can carry the URL: masked, and the endpoint named by its hash instead
        text = redact.redact(f"{type(exc).__name__}: {exc}")
        raise SendError("connection", f"{redact.url(url)}: {text}", retriable=True) from exc
    retriable = status in RETRIABLE_STATUSES or status >= 500
    raise SendError(
        f"http_{status}",
        f"{redact.url(url)} answered {status}: {detail}",
        retriable=retriable,
        retry_after=wait,
    )
