"""One pushed HTTP body -> the Kafka messages to publish, or the handshake's answer. Pure.

What is accepted here is what ingest accepts: the body goes through the same `decode` first,
and a body it refuses is refused with its reason (a 400, never published). A batch is split
into one message per event, keyed like `EventPublisher` keys (the run tree's root), so that
one tree's events stay in order on one partition; an entry `decode` rejects inside an
otherwise good batch is published too, alone, for ingest to dead-letter with its reason
(nothing pushed is dropped, and Event Grid is not asked to retry what can never succeed).
Entries of other event types are counted and left out, as ingest would skip them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from consumers.ingest.cloudevents_binding import kafka_headers_from_http
from consumers.ingest.decoding import Decoded, EventFormat, decode
from consumers.model.errors import DecodeError
from consumers.model.limits import Bounds

__all__ = ["Batch", "Message", "Validation", "plan"]

SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
_STRUCTURED = (("content-type", b"application/cloudevents+json; charset=UTF-8"),)
_ACCEPTED = (EventFormat.EVENT_GRID, EventFormat.CLOUDEVENTS)


@dataclass(frozen=True, slots=True)
class Message:
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    messages: tuple[Message, ...]
    events: int  # run events among the messages
    skipped: int  # entries of other event types, left out
    rejected: int  # entries decode refuses, published for ingest to dead-letter


@dataclass(frozen=True, slots=True)
class Validation:
    """Event Grid's subscription validation handshake: answer `{"validationResponse": code}`."""

    code: str


def plan(
    body: bytes, headers: Mapping[str, str], *, bounds: Bounds, max_bytes: int
) -> Batch | Validation:
    """Raises `DecodeError` for a body that cannot be used (the caller's 400). `max_bytes` is
    the size one Kafka message may have (`kafka.max_message_bytes`)."""
    binary = kafka_headers_from_http(headers)
    if binary is not None:  # CloudEvents HTTP binary mode: published in Kafka binary mode
        decoded = decode(body, max_bytes=max_bytes, bounds=bounds, headers=binary)
        return _single(decoded, body, tuple(binary))
    decoded = decode(body, max_bytes=max(max_bytes, len(body)), bounds=bounds)
    doc = _parse(body)
    code = _validation_code(doc, headers)
    if code is not None:
        return Validation(code)
    if decoded.format not in _ACCEPTED:
        detail = f"a {decoded.format} message; this endpoint takes Event Grid or CloudEvents events"
        raise DecodeError("unknown_shape", detail)
    if isinstance(doc, dict):
        if len(body) > max_bytes:
            raise DecodeError("too_large", f"{len(body)} bytes > limit of {max_bytes}")
        return _single(decoded, body, _STRUCTURED if doc.get("specversion") else ())
    return _split(doc, bounds, max_bytes)


def _single(decoded: Decoded, body: bytes, headers: tuple[tuple[str, bytes], ...]) -> Batch:
    if not decoded.events:
        return Batch((), 0, decoded.skipped, 0)
    key = decoded.events[0].root_run_id.encode()
    return Batch((Message(key, body, headers),), 1, 0, 0)


def _split(items: list[Any], bounds: Bounds, max_bytes: int) -> Batch:
    messages: list[Message] = []
    events = skipped = rejected = 0
    for item in items:
        value = orjson.dumps(item)
        headers = _STRUCTURED if isinstance(item, dict) and "specversion" in item else ()
        try:
            decoded = decode(value, max_bytes=max_bytes, bounds=bounds)
        except DecodeError:
            rejected += 1
            messages.append(Message(None, value, headers))
            continue
        if decoded.events:
            events += 1
            messages.append(Message(decoded.events[0].root_run_id.encode(), value, headers))
        else:
            skipped += decoded.skipped
    return Batch(tuple(messages), events, skipped, rejected)


def _validation_code(doc: Any, headers: Mapping[str, str]) -> str | None:
    """The code of a SubscriptionValidationEvent (Event Grid sends it alone, in an array, with
    `aeg-event-type: SubscriptionValidation`); None for any other body."""
    first = doc[0] if isinstance(doc, list) and doc else doc
    if not isinstance(first, dict) or first.get("eventType") != SUBSCRIPTION_VALIDATION:
        if _header(headers, "aeg-event-type") == "SubscriptionValidation":
            raise DecodeError("schema", "aeg-event-type SubscriptionValidation without the event")
        return None
    data = first.get("data")
    code = data.get("validationCode") if isinstance(data, dict) else None
    if not isinstance(code, str) or not code:
        raise DecodeError("schema", "SubscriptionValidationEvent without data.validationCode")
    return code


def _parse(body: bytes) -> Any:
    """decode() accepted the body; its fast path takes a few things orjson does not (an
    integer past 64 bits in a native event): those are refused here, not raised."""
    try:
        return orjson.loads(body.lstrip(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", str(exc)[:500]) from None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)
