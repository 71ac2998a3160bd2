"""`runwatch` as a user runs it: a real process, its exit code and what it prints, against
the session's broker and SQLite stores seeded through the ingest write path."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers.model.events import RunStatusEvent
from consumers.store import Store
from consumers.store.migrate import head_revision
from consumers.store.writer import DeadLetter
from tests.conftest import RUNWATCH, Topics

GOOD_YAML = """\
kafka:
  bootstrap_servers: "127.0.0.1:9092"
  topic: runwatch.run-status
  dead_letter_topic: runwatch.dead-letter
  group_id: runwatch
store:
  url: "sqlite:///./runwatch.db"
metrics:
  listen: "127.0.0.1:9464"
"""
QUERY = "[?properties.author=='azureml-user' && tags.quality=='fantastic run']"


def runwatch(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One `runwatch` process, with none of the runner's RUNWATCH_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
    return subprocess.run(
        [RUNWATCH, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        timeout=120,
        check=False,
    )


def failed(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 with a one-line-per-problem message naming `words`, and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(("runwatch: ", "run ")), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


# -- config check ------------------------------------------------------------------------


def test_config_check_accepts_the_documented_file(tmp_path: Path) -> None:
    path = tmp_path / "runwatch.yaml"
    path.write_text(GOOD_YAML)
    out = ok(runwatch("config", "check", str(path)))
    assert out.strip() == f"{path}: OK (kafka 127.0.0.1:9092, store sqlite:///./runwatch.db)"


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (("bootstrap_servers:", "bootstrap_server:"), "kafka.bootstrap_server", "unknown key"),
        (('listen: "127.0.0.1:9464"', "listen: nope"), "metrics.listen", "expected host:port"),
        (("group_id: runwatch", "group_id: [runwatch"), "", "line 6"),
    ],
)
def test_config_check_names_the_bad_key(
    tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_YAML.replace(*change))
    result = runwatch("config", "check", str(path))
    failed(result, key, words, str(path))
    assert result.stdout == ""


def test_config_check_of_event_hubs_needs_the_password(tmp_path: Path) -> None:
    path = tmp_path / "eventhubs.yaml"
    path.write_text(
        "kafka:\n  bootstrap_servers: NAMESPACE.servicebus.windows.net:9093\n"
        "  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n"
        '  sasl_username: "$ConnectionString"\n'
    )
    failed(runwatch("config", "check", str(path)), "kafka.sasl_username", "sasl_password")
    secret = "Endpoint=sb://namespace/;SharedAccessKey=TopSecretKey123="
    result = runwatch("config", "check", str(path), env={"RUNWATCH_KAFKA__SASL_PASSWORD": secret})
    assert "NAMESPACE.servicebus.windows.net:9093" in ok(result)
    assert "TopSecretKey123" not in result.stdout + result.stderr


INGEST_YAML = """\
ingest:
  max_future_skew_s: 3600
  earliest: "2020-01-01T00:00:00Z"
  max_depth: 8
  max_labels: 100
  max_key_chars: 256
  max_value_chars: 4096
  max_text_chars: 16384
  max_records: 1000
"""


def test_config_check_accepts_the_ingest_limits_and_the_example_file(tmp_path: Path) -> None:
    path = tmp_path / "runwatch.yaml"
    path.write_text(GOOD_YAML + INGEST_YAML)
    ok(runwatch("config", "check", str(path)))
    example = Path(__file__).resolve().parent.parent / "deploy" / "runwatch.example.yaml"
    assert "ingest:" in example.read_text()
    ok(runwatch("config", "check", str(example)))


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (("max_depth: 8", "max_dept: 8"), "ingest.max_dept", "unknown key"),
        (("max_depth: 8", "max_depth: 500"), "ingest.max_depth", "less than or equal to 200"),
        (("max_records: 1000", "max_records: 0"), "ingest.max_records", "greater than"),
        (('earliest: "2020-01-01T00:00:00Z"', "earliest: soon"), "ingest.earliest", "datetime"),
    ],
)
def test_config_check_names_a_bad_ingest_limit(
    tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_YAML + INGEST_YAML.replace(*change))
    failed(runwatch("config", "check", str(path)), key, words)


def test_an_ingest_limit_from_the_environment_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "runwatch.yaml"
    path.write_text(GOOD_YAML)
    ok(runwatch("config", "check", str(path), env={"RUNWATCH_INGEST__MAX_LABELS": "10"}))
    result = runwatch("config", "check", str(path), env={"RUNWATCH_INGEST__MAX_LABELS": "-1"})
    failed(result, "ingest.max_labels", "RUNWATCH_INGEST__MAX_LABELS")


def test_config_check_of_a_missing_file(tmp_path: Path) -> None:
    failed(runwatch("config", "check", str(tmp_path / "nope.yaml")), "cannot read")


# -- emit --------------------------------------------------------------------------------


def _read(topics: Topics, count: int) -> list[tuple[bytes, dict[str, Any]]]:
    records: list[Any] = topics.read(topics.topic, count)
    assert len(records) == count
    return sorted(((r.key, orjson.loads(r.value)) for r in records), key=lambda kv: kv[1]["RunId"])


def test_emit_from_flags(topics: Topics) -> None:
    result = runwatch(
        "emit",
        "--bootstrap", topics.bootstrap,
        "--topic", topics.topic,
        "--run-id", "r1",
        "--status", "failed",
        "--experiment", "e",
        "--tag", "quality=good",
        "--tag", "flag",
        "--property", "author=me",
        "--message", "CUDA out of memory",
    )  # fmt: skip
    ok(result)
    assert f"published 1 event(s) to {topics.topic}" in result.stderr
    [(key, value)] = _read(topics, 1)
    assert key == b"r1"  # no parent: the run is its own tree's root
    event = RunStatusEvent.model_validate(value)
    assert (event.RunId, event.Status, event.ExperimentName) == ("r1", "Failed", "e")
    assert event.Level == "Error"
    assert event.Message == "CUDA out of memory"
    assert event.Tags == {"quality": "good", "flag": None}
    assert event.Properties == {"author": "me"}
    assert abs(event.TimeGenerated - datetime.now(UTC)) < timedelta(minutes=5)


def test_emit_json_lines_from_stdin_keyed_by_the_root_run(topics: Topics) -> None:
    lines = [
        {"RunId": "child", "ParentRunId": "parent", "RootRunId": "root", "Status": "Running",
         "TimeGenerated": "2024-05-01T12:00:00Z", "ExperimentName": "sweep"},
        {"RunId": "kid", "ParentRunId": "parent", "Status": "QUEUED", "Tags": {"lr": 0.1}},
        {"RunId": "solo", "Status": "Completed", "Properties": {"author": "azureml-user"}},
    ]  # fmt: skip
    stdin = b"\n".join(orjson.dumps(line) for line in lines) + b"\n\n"
    result = runwatch("emit", "--bootstrap", topics.bootstrap, "--topic", topics.topic, stdin=stdin)
    ok(result)
    assert "published 3 event(s)" in result.stderr
    (child_key, child), (kid_key, kid), (solo_key, solo) = _read(topics, 3)
    assert (child_key, kid_key, solo_key) == (b"root", b"parent", b"solo")
    assert child["TimeGenerated"] == "2024-05-01T12:00:00Z"
    assert child["Status"] == "Running" and child["ExperimentName"] == "sweep"
    assert kid["Status"] == "Queued"
    assert kid["Tags"] == {"lr": "0.1"}
    assert solo["Properties"] == {"author": "azureml-user"}
    assert "TimeGenerated" in kid and "TimeGenerated" in solo  # filled in with now


def test_emit_bad_stdin_names_the_line_and_publishes_nothing(topics: Topics) -> None:
    stdin = b'{"RunId": "a", "Status": "Running"}\n{"RunId": "b", "Status": \n'
    result = runwatch("emit", "--bootstrap", topics.bootstrap, "--topic", topics.topic, stdin=stdin)
    failed(result, "stdin line 2")
    result = runwatch(
        "emit", "--bootstrap", topics.bootstrap, "--topic", topics.topic,
        stdin=b'{"RunId": "a", "Status": "Exploded"}\n',
    )  # fmt: skip
    failed(result, "stdin line 1", "Status")
    failed(
        runwatch("emit", "--bootstrap", topics.bootstrap, "--topic", topics.topic, stdin=b""),
        "no event given",
    )
    failed(
        runwatch("emit", "--bootstrap", topics.bootstrap, "--run-id", "r", "--status", "done"),
        "unknown status",
    )
    assert topics.read(topics.topic, 1, timeout=1.0) == []


# -- db upgrade, runs, dead-letters ------------------------------------------------------

NOW = datetime.now(UTC)


def ev(run: str, status: str, minutes_ago: float, **fields: Any) -> RunStatusEvent:
    return RunStatusEvent.model_validate(
        {"RunId": run, "Status": status, "TimeGenerated": NOW - timedelta(minutes=minutes_ago)}
        | fields
    )


@pytest.fixture
def seeded(store: Store, store_url: str) -> str:
    good = {"ExperimentName": "mnist", "Tags": {"quality": "fantastic run", "flag": None},
            "Properties": {"author": "azureml-user"}}  # fmt: skip
    store.write_batch(
        [
            ev("best", "Queued", 50, **good),
            ev("best", "Running", 45, **good),
            ev("best", "Completed", 10, **good),
            ev("meh", "Running", 40, ExperimentName="mnist", Tags={"quality": "meh"},
               Properties={"author": "azureml-user"}),
            ev("crash", "Running", 30, ExperimentName="cifar", Properties={"author": "someone"}),
            ev("crash", "Failed", 20, ExperimentName="cifar", Message="CUDA out of memory"),
            ev("child-1", "Completed", 15, ExperimentName="cifar", ParentRunId="crash",
               RootRunId="crash"),
            ev("ancient", "Completed", 60 * 5, ExperimentName="mnist"),
        ],
        [DeadLetter("runs", 2, 17, "not_json", "Expecting value at 1:1", b"k", b"garbage{")],
    )  # fmt: skip
    return store_url


def runs(store_url: str, *args: str) -> list[str]:
    out = ok(runwatch("runs", "list", "--store", store_url, "-o", "json", *args))
    return [record["runId"] for record in orjson.loads(out)]


def test_db_upgrade_then_an_empty_list(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'runwatch.db'}"
    out = ok(runwatch("db", "upgrade", "--store", url))
    assert out.strip() == f"{url}: schema at {head_revision()}"
    assert ok(runwatch("runs", "list", "--store", url)).strip() == "No runs found."
    assert ok(runwatch("dead-letters", "list", "--store", url)).strip() == "No dead letters."


def test_runs_list_filters(seeded: str) -> None:
    assert runs(seeded) == ["best", "child-1", "crash", "meh", "ancient"]
    assert runs(seeded, "--status", "Failed") == ["crash"]
    assert runs(seeded, "--tag", "quality=meh") == ["meh"]
    assert runs(seeded, "--property", "author=azureml-user") == ["best", "meh"]
    assert runs(seeded, "--query", QUERY) == ["best"]
    assert runs(seeded, "--since", "1h") == ["best", "child-1", "crash", "meh"]
    assert runs(seeded, "--status", "failed,completed", "--experiment", "mnist") == [
        "best",
        "ancient",
    ]


def test_runs_list_json_and_table(seeded: str) -> None:
    records = orjson.loads(ok(runwatch("runs", "list", "--store", seeded, "-o", "json")))
    best = records[0]
    assert best["runId"] == "best"
    assert best["status"] == "Completed"
    assert best["tags"] == {"quality": "fantastic run", "flag": None}
    assert best["properties"] == {"author": "azureml-user"}
    assert best["durationSeconds"] == pytest.approx(35 * 60, abs=1)
    table = ok(runwatch("runs", "list", "--store", seeded, "--status", "Failed")).splitlines()
    assert table[0].split()[:3] == ["RUN", "ID", "STATUS"]
    assert len(table) == 2
    assert table[1].split()[:3] == ["crash", "Failed", "cifar"]


def test_a_table_cut_by_limit_says_so(store: Store, store_url: str) -> None:
    """Without the note a newcomer reads the first 50 runs as all there are."""
    store.write_batch(
        [ev(f"run-{i:03d}", "Completed", i / 10, ExperimentName="mnist") for i in range(231)],
        [DeadLetter("runs", 0, offset, "not_json", "bad", None, b"x") for offset in range(3)],
    )
    table = ok(runwatch("runs", "list", "--store", store_url)).splitlines()
    assert table[-1] == "50 of 231 shown; --limit to see more"
    assert sum(line.startswith("run-") for line in table) == 50
    # a filter SQL cannot apply (a glob): the matching runs are counted as they stream by
    cut = ok(runwatch("runs", "list", "--store", store_url, "--experiment", "mn*", "--limit", "7"))
    assert cut.splitlines()[-1] == "7 of 231 shown; --limit to see more"
    everything = ok(runwatch("runs", "list", "--store", store_url, "--limit", "231"))
    assert "shown" not in everything
    # JSON stays parseable: the note goes to stderr
    as_json = runwatch("runs", "list", "--store", store_url, "-o", "json")
    assert len(orjson.loads(ok(as_json))) == 50
    assert as_json.stderr.strip() == "50 of 231 shown; --limit to see more"
    letters = ok(runwatch("dead-letters", "list", "--store", store_url, "--limit", "2"))
    assert letters.splitlines()[-1] == "2 of 3 shown; --limit to see more"


def test_runs_list_rejects_bad_filters_with_a_message(seeded: str) -> None:
    result = runwatch("runs", "list", "--store", seeded, "--query", "[?properties.author==")
    failed(result, "bad JMESPath query")
    assert result.stdout == ""
    failed(runwatch("runs", "list", "--store", seeded, "--status", "Finished"), "'Finished'")
    failed(runwatch("runs", "list", "--store", seeded, "--since", "yesterday"), "--since")


def test_runs_show(seeded: str) -> None:
    out = ok(runwatch("runs", "show", "crash", "--store", seeded))
    assert "Run ID:        crash" in out
    assert "Status:        Failed" in out
    assert "Message:       CUDA out of memory" in out
    timeline = out.split("Timeline:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert timeline[0].split() == ["STATUS", "TIME", "IN", "STATE", "MESSAGE"]
    assert [line.split()[0] for line in timeline[1:]] == ["Running", "Failed"]
    assert "10m 00s" in timeline[1]  # Running for ten minutes before it failed
    assert "CUDA out of memory" in timeline[2]
    children = out.split("Children (1):\n", 1)[1].splitlines()
    assert children[1].split()[:3] == ["child-1", "Completed", "cifar"]

    data = orjson.loads(ok(runwatch("runs", "show", "crash", "--store", seeded, "-o", "json")))
    assert [entry["status"] for entry in data["timeline"]] == ["Running", "Failed"]
    assert [child["runId"] for child in data["children"]] == ["child-1"]

    result = runwatch("runs", "show", "no-such-run", "--store", seeded)
    failed(result, "'no-such-run' is not in the store")
    assert result.stdout == ""


def test_dead_letters_list(seeded: str) -> None:
    table = ok(runwatch("dead-letters", "list", "--store", seeded)).splitlines()
    assert table[0].split() == ["ID", "RECEIVED", "REASON", "SOURCE", "BYTES", "ERROR", "PAYLOAD"]
    assert len(table) == 2
    assert "not_json" in table[1] and "runs[2]@17" in table[1] and "garbage{" in table[1]
    rows = orjson.loads(ok(runwatch("dead-letters", "list", "--store", seeded, "-o", "json")))
    assert [(r["reason"], r["sourceOffset"], r["payloadPreview"], r["key"]) for r in rows] == [
        ("not_json", 17, "garbage{", "k")
    ]
    none = ok(runwatch("dead-letters", "list", "--store", seeded, "--reason", "schema"))
    assert none.strip() == "No dead letters."


def test_a_store_never_migrated_says_to_run_db_upgrade(tmp_path: Path) -> None:
    db = tmp_path / "never-migrated.db"
    db.touch()
    url = f"sqlite:///{db}"
    for command in (["runs", "list"], ["dead-letters", "list"]):
        result = runwatch(*command, "--store", url)
        failed(result, "no runwatch schema", "run `runwatch db upgrade`")
        assert result.stdout == ""


def test_the_store_flag_wins_over_the_environment(seeded: str, tmp_path: Path) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = runwatch(
        "runs", "list", "--store", seeded, "-o", "json", env={"RUNWATCH_STORE__URL": elsewhere}
    )
    assert [r["runId"] for r in orjson.loads(ok(result))][:1] == ["best"]


def test_a_bad_flag_value_names_the_key() -> None:
    result = runwatch("emit", "--bootstrap", "no-port-here", "--run-id", "r", "--status", "Running")
    failed(result, "kafka.bootstrap_servers", "host:port")
    failed(runwatch("runs", "list", "--store", "mysql://db/runs"), "store.url")
