"""Coverage-guided fuzzing of `consumers.ingest.decoding.decode` with atheris (libFuzzer).

Starts from a seed corpus of one valid message of every input format and a few hostile ones,
with a dictionary of the formats' keys and JSON's odd tokens, and mutates them guided by the
coverage of decoding, the event models and the limits. A finding is an input for which decode
raises anything but DecodeError, raises DecodeError with reason `internal` (a bug the isolation
boundary caught), returns an event outside the limits or one the store could not write, or
spends more than MAX_CPU_S of CPU. libFuzzer stops at the first and writes it to crash-<sha1>.

    python benchmarks/fuzz_decode.py [-max_total_time=300] [other libFuzzer flags] [CORPUS_DIR]

`make fuzz` runs this (FUZZ_SECONDS=300) and then the hypothesis properties of
tests/test_decode_fuzz.py with random seeds and many examples.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import atheris
import orjson

with atheris.instrument_imports(include=["consumers"]):
    from consumers.ingest.decoding import INTERNAL, EventFormat, decode
    from consumers.ingest.encoding import encode, encode_many
    from consumers.model.errors import DecodeError
    from consumers.model.events import RunStatusEvent
    from consumers.model.limits import IngestLimits
    from consumers.model.updates import RunUpdate

NOW = datetime.now(UTC)
LIMITS = IngestLimits(max_labels=40, max_records=200, max_depth=16)
BOUNDS = LIMITS.at(NOW)
MAX_CPU_S = 0.5

# Words of the formats and JSON's odd tokens: libFuzzer splices them into inputs.
TOKENS = [
    "TimeGenerated", "RunId", "Status", "Tags", "Properties", "Message", "Level", "DurationMs",
    "records", "category", "properties", "time", "eventType", "eventTime", "data", "runId",
    "runStatus", "runTags", "specversion", "type", "RunUpdate", "SetTags", "RemoveTags",
    "AddProperties", "Description", "AmlRunStatusChangedEvent",
    "Microsoft.MachineLearningServices.RunStatusChanged",
    "NaN", "Infinity", "-Infinity", "1e999", "-0", "null", "true", "false",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "\\ud800", "\\u0000",
    "[[[[[[[[", '{"":{"":{"', "18446744073709551616",
]  # fmt: skip


def seeds() -> list[bytes]:
    event = RunStatusEvent(
        TimeGenerated=NOW - timedelta(minutes=1),
        RunId="train_1",
        Status="Failed",
        ExperimentName="exp",
        WorkspaceName="ws",
        Message="CUDA out of memory",
        DurationMs=1500,
        Tags={"team": "nlp", "flag": None},
        Properties={"author": "me"},
    )
    update = RunUpdate(
        TimeGenerated=NOW, RunId="train_1", SetTags={"a": "b"}, RemoveTags=("c",), Description="d"
    )
    out = [encode(event, fmt) for fmt in EventFormat]
    out += [encode_many([event, event], fmt) for fmt in EventFormat if fmt != EventFormat.NATIVE]
    out += [
        update.to_json(),
        event.to_json()[:-1] + b',"Tags":{"n":[1,{"x":[2.5,null]}]}}',
        b'{"records":[{},{"category":"AmlRunStatusChangedEvent","properties":"{}"}]}',
        b'{"TimeGenerated":"0001-01-01T00:00:00+01:00","RunId":"x","Status":"Running"}',
    ]
    return out


def check(data: bytes) -> None:
    started = time.process_time()
    try:
        result = decode(data, bounds=BOUNDS)
    except DecodeError as exc:
        if exc.reason == INTERNAL:
            raise AssertionError(f"internal: {exc.detail}") from exc.__cause__
        return
    finally:
        spent = time.process_time() - started
        if spent > MAX_CPU_S:
            raise AssertionError(f"{spent:.2f}s of CPU for {len(data)} bytes")
    for event in result.events:
        assert BOUNDS.earliest <= event.TimeGenerated <= BOUNDS.latest, event.TimeGenerated
        assert len(event.Tags) <= LIMITS.max_labels and len(event.Properties) <= LIMITS.max_labels
        orjson.loads(event.to_json())
    for update in result.updates:
        assert BOUNDS.earliest <= update.TimeGenerated <= BOUNDS.latest, update.TimeGenerated
        orjson.loads(update.to_json())
    if result.rejected is not None:
        assert result.rejected.reason != INTERNAL, result.rejected.first


def _escaped(token: str) -> str:
    """A libFuzzer dictionary entry: backslash and quote escaped."""
    return token.replace("\\", "\\\\").replace('"', '\\"')


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg.startswith("-")]
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    work = Path(tempfile.mkdtemp(prefix="runwatch-fuzz-"))
    if not corpus:
        seed_dir = work / "corpus"
        seed_dir.mkdir()
        for index, seed in enumerate(seeds()):
            (seed_dir / f"seed-{index}").write_bytes(seed)
        corpus = [str(seed_dir)]
    dictionary = work / "json.dict"
    dictionary.write_text("".join(f'"{_escaped(token)}"\n' for token in TOKENS))
    print(f"corpus {corpus[0]}, dictionary {dictionary}", flush=True)
    atheris.Setup([sys.argv[0], f"-dict={dictionary}", "-timeout=10", *args, *corpus], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
