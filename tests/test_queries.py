"""Read-only queries and their CLI formatting, against real SQLite and (when reachable)
PostgreSQL stores seeded through the same write path as ingest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers.cli.reports import (
    format_dead_letters,
    format_run_detail,
    format_runs,
    humanize_seconds,
)
from consumers.model.events import RunStatusEvent
from consumers.store.engine import Store, make_engine
from consumers.store.migrate import upgrade
from consumers.store.queries import (
    RunFilter,
    get_run,
    get_runs,
    glob_to_like,
    list_dead_letters,
    list_runs,
)
from consumers.store.writer import DeadLetter

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=2)


def ev(run: str, status: str, seconds: float, **fields: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {"RunId": run, "Status": status, "TimeGenerated": T0 + timedelta(seconds=seconds)} | fields
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/s.db"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(make_engine(url))
    try:
        upgrade(s)
        with s.engine.begin() as conn:  # the PostgreSQL database is shared by the module
            for table in ("events", "runs", "dead_letters"):
                conn.exec_driver_sql(f"DELETE FROM {table}")
        yield s
    finally:
        s.dispose()


FANTASTIC = {"quality": "fantastic run", "flag": None}
AUTHOR = {"author": "azureml-user"}


@pytest.fixture
def seeded(store: Store) -> Store:
    mnist = {"ExperimentName": "mnist-train", "WorkspaceName": "ws"}
    store.write_batch(
        [
            ev("a1", "Queued", 0, **mnist, Tags=FANTASTIC, Properties=AUTHOR),
            ev("a1", "Running", 60, **mnist, Tags=FANTASTIC, Properties=AUTHOR),
            ev("a1", "Completed", 3660, **mnist, Tags=FANTASTIC, Properties=AUTHOR),
            ev("a2", "Queued", 100, **mnist, Tags={"quality": "meh"}),
            ev("a2", "Running", 160, **mnist, Tags={"quality": "meh"}),
            ev("b1", "Failed", 200, ExperimentName="cifar_100%", Message="boom\nline 2",
               Properties=AUTHOR),
            ev("c1", "Queued", 50, ExperimentName="cifarX100%"),
            ev("p", "Running", 10, ExperimentName="hyperdrive"),
            ev("k2", "Running", 30, ExperimentName="hyperdrive", ParentRunId="p", RootRunId="p"),
            ev("k1", "Queued", 20, ExperimentName="hyperdrive", ParentRunId="p", RootRunId="p"),
            ev("k1", "Completed", 80, ExperimentName="hyperdrive", ParentRunId="p"),
        ]
    )  # fmt: skip
    return store


def ids(store: Store, **kwargs: Any) -> list[str]:
    return [r["runId"] for r in list_runs(store, RunFilter(**kwargs), now=NOW)]


def test_lists_newest_first(seeded: Store) -> None:
    assert ids(seeded) == ["a1", "b1", "a2", "k1", "c1", "k2", "p"]
    assert ids(seeded, limit=2) == ["a1", "b1"]


def test_experiment_exact_and_glob(seeded: Store) -> None:
    assert ids(seeded, experiment="mnist-train") == ["a1", "a2"]
    assert ids(seeded, experiment="mnist") == []
    assert ids(seeded, experiment="mnist*") == ["a1", "a2"]
    assert ids(seeded, experiment="MNIST*") == []  # case-sensitive on SQLite too
    assert ids(seeded, experiment="cifar_*") == ["b1"]  # `_` and `%` are literal
    assert ids(seeded, experiment="cifar?100%") == ["b1", "c1"]
    assert ids(seeded, experiment="[hm]*") == ["a1", "a2", "k1", "k2", "p"]
    assert ids(seeded, experiment="[!hm]*") == ["b1", "c1"]


def test_glob_to_like() -> None:
    assert glob_to_like("a*b?c") == "a%b_c"
    assert glob_to_like("100%_\\") == "100\\%\\_\\\\"
    assert glob_to_like("[ab]x[!c]") == "_x_"
    assert glob_to_like("x[ab") == "x[ab"  # unclosed: literal, as in fnmatch


def test_status_filter(seeded: Store) -> None:
    assert ids(seeded, statuses=("failed", "COMPLETED")) == ["a1", "b1", "k1"]
    assert ids(seeded, statuses=("Running",)) == ["a2", "k2", "p"]
    with pytest.raises(ValueError, match="'Finished'"):
        RunFilter(statuses=("Queued", "Finished"))


def test_since(seeded: Store) -> None:
    assert ids(seeded, since=T0 + timedelta(seconds=160)) == ["a1", "b1", "a2"]
    # Any time zone: compared in UTC.
    plus2 = T0.astimezone(timezone(timedelta(hours=2)))
    assert ids(seeded, since=plus2 + timedelta(seconds=161)) == ["a1", "b1"]


def test_tags_and_properties(seeded: Store) -> None:
    assert ids(seeded, tags=(("flag", None),)) == ["a1"]  # a tag with no value is present
    assert ids(seeded, tags=(("quality", None),)) == ["a1", "a2"]
    assert ids(seeded, tags=(("quality", "meh"),)) == ["a2"]
    assert ids(seeded, tags=(("flag", "x"),)) == []
    assert ids(seeded, properties=(("author", "azureml-user"),)) == ["a1", "b1"]
    assert ids(seeded, tags=(("quality", None),), properties=(("author", "azureml-user"),)) == [
        "a1"
    ]
    # limit counts runs after the Python filters, not SQL rows
    assert ids(seeded, tags=(("quality", "meh"),), limit=1) == ["a2"]


def test_jmespath(seeded: Store) -> None:
    query = "[?properties.author=='azureml-user' && tags.quality=='fantastic run']"
    assert ids(seeded, query=query) == ["a1"]
    assert ids(seeded, query="[?status=='Failed' || parentRunId=='p']") == ["b1", "k1", "k2"]
    assert ids(seeded, query="[?durationSeconds < `7000`]", experiment="mnist*") == ["a1"]
    with pytest.raises(ValueError, match="JMESPath"):
        RunFilter(query="[?properties.author=='azureml-user' &&")


def test_run_record_fields(seeded: Store) -> None:
    a1, _b1, a2 = list_runs(seeded, RunFilter(limit=3), now=NOW)
    assert a1 == {
        "runId": "a1",
        "status": "Completed",
        "experimentName": "mnist-train",
        "experimentId": None,
        "workspaceName": "ws",
        "workspaceId": None,
        "parentRunId": None,
        "rootRunId": None,
        "runType": None,
        "triggeringUserName": None,
        "message": None,
        "cause": None,
        "tags": FANTASTIC,
        "properties": AUTHOR,
        "firstSeenUtc": "2024-05-01T12:00:00Z",
        "lastSeenUtc": "2024-05-01T13:01:00Z",
        "startTimeUtc": "2024-05-01T12:01:00Z",
        "endTimeUtc": "2024-05-01T13:01:00Z",
        "durationSeconds": 3600.0,
    }
    assert a2["durationSeconds"] == (NOW - (T0 + timedelta(seconds=160))).total_seconds()
    assert a2["endTimeUtc"] is None
    b1 = get_run(seeded, "b1", now=NOW)
    assert b1 is not None
    assert b1.run["durationSeconds"] is None  # never ran: no start
    assert orjson.loads(orjson.dumps(a1)) == a1


def test_cause_filter_takes_a_cause_or_a_word_of_one(store: Store) -> None:
    """`runs list --cause oom` is every out-of-memory cause (cuda_oom, host_oom, a user's
    gpu_oom); `cuda_oom` only itself; a run whose latest event is not a failure has none."""
    for run, cause in (
        ("c", "cuda_oom"),
        ("h", "host_oom"),
        ("g", "gpu_oom"),
        ("e", "cuda_error"),
        ("b", "boom"),  # "oom" is a word of a name, not any substring
        ("o", "oom"),
        ("u", "unknown"),
    ):
        store.write_batch([ev(run, "Failed", 60, cause=cause)])
    store.write_batch([ev("x", "Failed", 60, cause="cuda_oom"), ev("x", "Running", 0)])
    store.write_batch([ev("y", "Failed", 60, cause="host_oom"), ev("y", "Completed", 120)])

    def causes(word: str) -> set[str]:
        return {r["runId"] for r in list_runs(store, RunFilter(cause=word))}

    assert causes("oom") == {"c", "h", "g", "o", "x"}
    assert causes("cuda_oom") == {"c", "x"}
    assert causes("cuda") == {"c", "e", "x"}
    assert causes("unknown") == {"u"}
    assert causes("error") == {"e"}
    with pytest.raises(ValueError, match="cause"):
        RunFilter(cause="OOM%")


def test_out_of_order_arrival(store: Store) -> None:
    for status, seconds in (("Completed", 300), ("Running", 60), ("Queued", 0)):
        store.write_batch([ev("r", status, seconds, ExperimentName="e", Message=status)])
    # same time, arriving in reverse: lifecycle rank orders them
    store.write_batch([ev("r", "Finalizing", 300)])
    detail = get_run(store, "r", now=NOW)
    assert detail is not None
    assert detail.run["status"] == "Completed"
    assert detail.run["message"] == "Completed"
    assert detail.run["firstSeenUtc"] == "2024-05-01T12:00:00Z"
    assert detail.run["durationSeconds"] == 240.0
    assert [(e.status, e.seconds_in_state) for e in detail.timeline] == [
        ("Queued", 60.0),
        ("Running", 240.0),
        ("Finalizing", 0.0),
        ("Completed", None),
    ]
    assert detail.timeline[0].time == T0
    assert detail.timeline[0].message == "Queued"
    assert detail.timeline[2].message is None
    assert ids(store, statuses=("Completed",)) == ["r"]


def test_repeated_status_is_one_stretch(store: Store) -> None:
    store.write_batch([ev("r", "Running", 0, Message="up"), ev("r", "Running", 30)])
    store.write_batch([ev("r", "Failed", 100, Message="oom")])
    detail = get_run(store, "r", now=NOW)
    assert detail is not None
    assert [(e.status, e.seconds_in_state, e.message) for e in detail.timeline] == [
        ("Running", 100.0, "up"),
        ("Failed", None, "oom"),
    ]
    with pytest.raises(ValueError, match="limit"):
        RunFilter(limit=0)


def test_timeline_of_active_run_and_children(seeded: Store) -> None:
    detail = get_run(seeded, "a2", now=NOW)
    assert detail is not None
    assert [(e.status, e.seconds_in_state) for e in detail.timeline] == [
        ("Queued", 60.0),
        ("Running", (NOW - T0).total_seconds() - 160),
    ]
    assert detail.children == ()
    parent = get_run(seeded, "p", now=NOW)
    assert parent is not None
    assert [(c["runId"], c["status"]) for c in parent.children] == [
        ("k1", "Completed"),
        ("k2", "Running"),
    ]
    assert parent.children[0]["rootRunId"] == "p"
    assert get_run(seeded, "nope") is None


def test_runs_read_together_are_each_what_it_is_alone(seeded: Store) -> None:
    """The dispatcher reads a claimed batch's runs at once: no timeline or child may leak
    from one run of the batch to another, and an unknown run is None among known ones."""
    wanted = ["p", "a1", "nope", "a2", "k1", "b1", "c1", "k2", "a1"]
    together = get_runs(seeded, wanted, now=NOW)
    assert list(together) == list(dict.fromkeys(wanted))
    alone = {run_id: get_runs(seeded, [run_id], now=NOW)[run_id] for run_id in wanted}
    assert together == alone
    assert together["nope"] is None and get_runs(seeded, [], now=NOW) == {}
    a1 = together["a1"]
    assert a1 is not None and [e.status for e in a1.timeline] == ["Queued", "Running", "Completed"]


def letter(offset: int, reason: str, payload: bytes | None, key: bytes | None = None) -> Any:
    return DeadLetter("runs", 1, offset, reason, f"error {offset}", key, payload)


def test_dead_letters(store: Store) -> None:
    big = "é".encode() * 300 + b"\xff"
    store.write_batch([], [letter(1, "not_json", b"\xffnot json\n", b"k\xfe")], now=T0)
    store.write_batch([], [letter(2, "schema", big), letter(3, "schema", None)], now=NOW)
    rows = list_dead_letters(store)
    assert [r["sourceOffset"] for r in rows] == [3, 2, 1]
    old = rows[2]
    assert old["receivedAtUtc"] == "2024-05-01T12:00:00Z"
    assert old["payloadPreview"] == "\\xffnot json\n"
    assert old["key"] == "k\\xfe"
    assert (old["reason"], old["error"], old["sourceTopic"], old["sourcePartition"]) == (
        "not_json",
        "error 1",
        "runs",
        1,
    )
    assert rows[1]["payloadPreview"] == "é" * 120
    assert rows[1]["payloadBytes"] == 601
    assert rows[0]["payloadPreview"] is None
    assert rows[0]["payloadBytes"] == 0
    assert [r["sourceOffset"] for r in list_dead_letters(store, reason="schema", limit=1)] == [3]
    table = format_dead_letters(rows, "table")
    assert "not json" in table and "runs[1]@1" in table
    assert orjson.loads(format_dead_letters(rows, "json")) == rows
    assert format_dead_letters([], "table") == "No dead letters."


def test_humanize_seconds() -> None:
    assert humanize_seconds(45.9) == "45s"
    assert humanize_seconds(185) == "3m 05s"
    assert humanize_seconds(3720) == "1h 02m"
    assert humanize_seconds(2 * 86400 + 3 * 3600) == "2d 03h"
    assert [humanize_seconds(v) for v in (None, "x", float("nan"), float("inf"))] == ["-"] * 4


def test_format_runs(seeded: Store) -> None:
    records = list_runs(seeded, RunFilter(), now=NOW)
    table = format_runs(records, "table")
    lines = table.splitlines()
    header = ["RUN", "ID", "STATUS", "EXPERIMENT", "STARTED", "DURATION", "CAUSE", "TAGS"]
    assert lines[0].split() == header
    a1 = lines[1]
    assert a1.startswith("a1 ") and "2024-05-01 12:01:00" in a1 and "1h 00m" in a1
    assert "quality=fantastic run, flag" in a1
    assert lines[0].index("STATUS") == a1.index("Completed")  # aligned
    assert orjson.loads(format_runs(records, "json")) == records
    assert format_runs([], "table") == "No runs found."
    with pytest.raises(ValueError, match="output"):
        format_runs(records, "yaml")  # type: ignore[arg-type]


def test_format_odd_content() -> None:
    odd: dict[str, Any] = dict.fromkeys(["runId", "status", "tags", "durationSeconds"])
    weird = {"runId": "日本語-run", "status": "Failed", "experimentName": "a\nb\tc\x00d",
             "tags": {"k": "v\r\nw", "ключ": None}, "startTimeUtc": "not a time",
             "durationSeconds": -5}  # fmt: skip
    table = format_runs([odd, {}, weird], "table")
    assert "\x00" not in table and "\t" not in table and "\r" not in table
    assert len(table.splitlines()) == 4
    # line breaks and tabs become spaces; other controls are shown escaped (never obeyed)
    assert "a b c\\u0000d" in table and "k=v w, ключ" in table and "-5s" in table
    assert orjson.loads(format_runs([odd, weird], "json"))[1]["experimentName"] == "a\nb\tc\x00d"
    long = {"runId": "x", "experimentName": "e" * 500}
    assert max(len(line) for line in format_runs([long], "table").splitlines()) < 120


def test_format_run_detail(seeded: Store) -> None:
    parent = get_run(seeded, "p", now=NOW)
    b1 = get_run(seeded, "b1", now=NOW)
    assert parent is not None and b1 is not None
    text = format_run_detail(parent, "table")
    assert "Run ID:" in text and "Timeline:" in text and "Children (2):" in text
    assert "k1" in text and "k2" in text and "1h 59m" in text
    failed = format_run_detail(b1, "table")
    assert "boom line 2" in failed and "Children: none" in failed
    data = orjson.loads(format_run_detail(parent, "json"))
    assert data["run"]["runId"] == "p"
    assert data["timeline"] == [
        {"status": "Running", "timeUtc": "2024-05-01T12:00:10Z", "secondsInState": 7190.0,
         "message": None}
    ]  # fmt: skip
    assert [c["runId"] for c in data["children"]] == ["k1", "k2"]
