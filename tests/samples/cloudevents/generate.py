"""Kafka messages made by the official `cloudevents` Python SDK, both modes, both its APIs.

Run by hand (not a test): `python tests/samples/cloudevents/generate.py` rewrites
sdk-kafka-messages.json; tests/test_samples.py checks the file still equals what the
installed SDK makes. The event is the documented RunStatusChanged CloudEvent
(eventgrid/runstatuschanged.cloudevents-schema.json) with datacontenttype added.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCUMENTED = HERE.parent / "eventgrid" / "runstatuschanged.cloudevents-schema.json"
OUT = HERE / "sdk-kafka-messages.json"


def _message(headers: dict[str, bytes], key: Any, value: Any) -> dict[str, Any]:
    raw = value if isinstance(value, bytes) else str(value).encode()
    return {
        "headers": {name: header.decode() for name, header in headers.items()},
        "key": key,
        "value": raw.decode(),
    }


def messages() -> dict[str, Any]:
    import cloudevents
    from cloudevents.core.bindings import kafka
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent
    from cloudevents.v1 import kafka as kafka_v1
    from cloudevents.v1.http import CloudEvent as CloudEventV1

    event = json.loads(DOCUMENTED.read_text())[0]
    data = event.pop("data")
    attributes = {**event, "datacontenttype": "application/json"}
    # the core API wants a datetime; it serialises microseconds (the 7th digit is lost)
    moment = datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC)
    core = CloudEvent({**attributes, "time": moment}, data)
    legacy = CloudEventV1(attributes, data)
    out: dict[str, Any] = {"cloudevents_version": cloudevents.__version__}
    for name, message in (
        ("core.to_binary", kafka.to_binary(core, JSONFormat())),
        ("core.to_structured", kafka.to_structured(core, JSONFormat())),
        ("v1.to_binary", kafka_v1.to_binary(legacy)),
        ("v1.to_structured", kafka_v1.to_structured(legacy)),
    ):
        out[name] = _message(message.headers, message.key, message.value)
    return out


if __name__ == "__main__":
    OUT.write_text(json.dumps(messages(), indent=2) + "\n")
    print(OUT)
