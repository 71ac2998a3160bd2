"""CloudEvents binary mode: the attributes travel as headers, the data as the message body.

Kafka protocol binding: every attribute but data is a header `ce_<name>`, `datacontenttype` is
the `content-type` header, the value is the data as is. HTTP binding: the same with `ce-<name>`
headers, percent-encoded values. A message whose `content-type` starts with
`application/cloudevents` is structured mode (everything in the value; `ce_` headers MAY also
be present and are then ignored); without `ce_specversion` it is no binary CloudEvent at all
(the `cloudevents` SDK's v1 structured mode sends `content-type: application/json` and no
`ce_` headers). The bindings name headers in lower case; they are matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import unquote

from consumers.model.errors import DecodeError

__all__ = ["KafkaHeaders", "binary_attributes", "kafka_headers_from_http"]

KafkaHeaders = Iterable[tuple[str, bytes | None]]  # kafka-python's ConsumerRecord.headers

_KAFKA_PREFIX = "ce_"
_HTTP_PREFIX = "ce-"
_CONTENT_TYPE = "content-type"
_STRUCTURED = "application/cloudevents"


def binary_attributes(headers: KafkaHeaders) -> dict[str, str] | None:
    """The event's attributes when the message is a binary-mode CloudEvent, else None (the
    value is then read as it always was). `datacontenttype` comes from `content-type`."""
    attributes: dict[str, bytes | None] = {}
    content_type: bytes | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == _CONTENT_TYPE:
            content_type = value
        elif lowered.startswith(_KAFKA_PREFIX):
            attributes[lowered[len(_KAFKA_PREFIX) :]] = value
    if "specversion" not in attributes:
        return None
    if content_type is not None and content_type[:32].lower().startswith(_STRUCTURED.encode()):
        return None
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    return {name: _text(name, value) for name, value in attributes.items() if value is not None}


def kafka_headers_from_http(headers: Mapping[str, str]) -> list[tuple[str, bytes]] | None:
    """An HTTP request's binary-mode attributes as the Kafka binding's headers, so that the
    event is published as the same binary-mode CloudEvent; None when the request is not one."""
    out: list[tuple[str, bytes]] = []
    content_type: str | None = None
    binary = False
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == _CONTENT_TYPE:
            content_type = value
        elif lowered.startswith(_HTTP_PREFIX) and len(lowered) > len(_HTTP_PREFIX):
            attribute = lowered[len(_HTTP_PREFIX) :]
            binary = binary or attribute == "specversion"
            out.append((_KAFKA_PREFIX + attribute, unquote(value).encode()))
    if not binary or (content_type or "").lower().startswith(_STRUCTURED):
        return None
    if content_type is not None:
        out.append((_CONTENT_TYPE, content_type.encode()))
    return out


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        header = "content-type" if name == "datacontenttype" else _KAFKA_PREFIX + name
        raise DecodeError("not_utf8", f"header {header[:60]} is not UTF-8") from None
