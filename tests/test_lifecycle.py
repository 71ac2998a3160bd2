"""The run lifecycle library end to end: real broker, a running consumer, the store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from consumers.cli.main import main
from consumers.client import Experiment, Run, Workspace
from consumers.model.errors import (
    PropertyConflictError,
    RunNotFoundError,
    RunStateError,
    RunwatchError,
)
from consumers.store import Store, open_store
from consumers.store.queries import get_run
from consumers.store.schema import events, notifications
from tests.conftest import RunningService, Topics, settings_for, wait_for


@pytest.fixture
def running(service: Callable[..., RunningService], store: Store) -> Iterator[RunningService]:
    with service() as started:
        yield started


@pytest.fixture
def ws(running: RunningService, topics: Topics, store_url: str) -> Iterator[Workspace]:
    with Workspace("ml-team", settings_for(topics, store_url), consistency_timeout=20) as opened:
        yield opened


def stored_statuses(store: Store, run_id: str) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(events.c.Status).where(events.c.RunId == run_id).order_by(events.c.TimeGenerated)
        )
        return [row.Status for row in rows]


def test_five_children_under_a_parent_that_completes(ws: Workspace, store: Store) -> None:
    folds = ["0", "1", "2", "3", "4"]
    with Experiment(ws, "cv-sweep").start_logging(tags={"team": "vision"}) as parent:
        kids = parent.create_children(5, tag_key="fold", tag_values=folds)
        for kid in kids:
            kid.complete()
    assert parent.get_status() == "Completed"
    children = parent.get_children()
    assert sorted(c.id for c in children) == sorted(k.id for k in kids)
    assert {c.get_status() for c in children} == {"Completed"}
    assert sorted(c.get_tags()["fold"] for c in children) == folds
    assert [c.id for c in parent.get_children(tags={"fold": "3"})] == [kids[3].id]
    assert parent.get_children(status="Failed") == []
    details = kids[0].get_details()
    assert details["parentRunId"] == parent.id
    assert details["rootRunId"] == parent.id
    assert details["experimentName"] == "cv-sweep"
    assert details["startTimeUtc"] and details["endTimeUtc"]
    assert details["durationSeconds"] >= 0
    assert kids[0].parent is parent
    assert stored_statuses(store, kids[2].id) == ["Running", "Completed"]
    # The parent's own detail page lists them, and every status change is one event.
    detail = get_run(store, parent.id)
    assert detail is not None and len(detail.children) == 5
    assert stored_statuses(store, parent.id) == ["Running", "Completed"]


def test_a_child_fails_while_its_parent_completes(ws: Workspace) -> None:
    parent = Experiment(ws, "train").start_logging()
    child = parent.child_run("evaluate")
    grandchild = child.child_run()
    child.fail("CUDA out of memory", error_code="OOM")
    grandchild.complete()
    parent.complete()
    assert parent.get_status() == "Completed"
    assert child.get_status() == "Failed"
    details = child.get_details()
    assert details["error"] == {"message": "CUDA out of memory", "code": "OOM"}
    assert child.description == "evaluate"
    child.description = "evaluate on the holdout set"
    assert child.description == "evaluate on the holdout set"
    assert parent.get_details()["error"] is None
    assert [r.id for r in parent.get_children()] == [child.id]
    assert {r.id for r in parent.get_children(recursive=True)} == {child.id, grandchild.id}
    assert grandchild.get_details()["rootRunId"] == parent.id
    # A child found through the store knows its parent.
    found = parent.get_children(status="Failed")[0]
    assert found.parent is not None and found.parent.id == parent.id
    with pytest.raises(RunStateError, match="already Failed"):
        child.complete()


def test_properties_are_write_once(ws: Workspace) -> None:
    run = Experiment(ws, "props").start_logging(properties={"author": "azureml-user"})
    run.add_properties({"author": "azureml-user", "git_commit": "abc123"})  # same value: fine
    with pytest.raises(PropertyConflictError, match="'author' is already 'azureml-user'"):
        run.add_properties({"dataset": "v2", "author": "somebody-else"})
    run.tag("stage", "1")
    assert run.get_properties() == {"author": "azureml-user", "git_commit": "abc123"}
    run.complete()
    assert run.get_properties() == {"author": "azureml-user", "git_commit": "abc123"}


def test_get_runs_by_property_tag_and_status(ws: Workspace) -> None:
    experiment = Experiment(ws, "search")
    good = experiment.start_logging(properties={"author": "azureml-user"})
    good.tag("quality", "fantastic run")
    good.complete()
    plain = experiment.start_logging(properties={"author": "someone"})
    plain.tag("quality")  # a tag without a value
    plain.fail("diverged")
    other = experiment.start_logging()
    child = other.child_run()
    child.tag("quality", "fantastic run")
    for run in (child, other):
        run.complete()
    for run in (good, plain, other):
        run.get_status()  # reads wait until the store shows what this process published
    other.get_children()

    def ids(runs: list[Run]) -> set[str]:
        return {r.id for r in runs}

    assert ids(experiment.get_runs()) == {good.id, plain.id, other.id}
    assert ids(experiment.get_runs(tags="quality")) == {good.id, plain.id}
    assert ids(experiment.get_runs(tags={"quality": "fantastic run"})) == {good.id}
    assert ids(experiment.get_runs(tags={"quality": "fantastic run"}, include_children=True)) == {
        good.id,
        child.id,
    }
    assert ids(experiment.get_runs(properties={"author": "azureml-user"})) == {good.id}
    assert ids(experiment.get_runs(properties="author")) == {good.id, plain.id}
    assert ids(experiment.get_runs(status="Failed")) == {plain.id}
    assert ids(experiment.get_runs(status=["Completed"], tags="quality")) == {good.id}
    # Another experiment and another workspace with the same experiment name are not in it.
    elsewhere = Experiment(ws, "elsewhere").start_logging()
    elsewhere.complete()
    elsewhere.get_status()
    with Workspace("other-team", ws.settings, consistency_timeout=20) as other_ws:
        stranger = Experiment(other_ws, "search").start_logging()
        stranger.get_status()
    assert ids(experiment.get_runs()) == {good.id, plain.id, other.id}
    found = Run.attach(ws, stranger.id)  # a run id alone finds its own workspace
    assert found.workspace.name == "other-team" and found.experiment.name == "search"
    runs = experiment.get_runs()
    assert runs[0].id == other.id  # newest first


def test_cancel(ws: Workspace, store: Store) -> None:
    run = Experiment(ws, "cancel-me").start_logging()
    run.cancel()
    assert run.get_status() == "Canceled"
    assert stored_statuses(store, run.id) == ["Running", "CancelRequested", "Canceled"]
    with pytest.raises(RunStateError):
        run.cancel()
    with pytest.raises(RunStateError):
        run.complete()


def test_an_exception_inside_the_context_manager_fails_the_run(ws: Workspace) -> None:
    experiment = Experiment(ws, "crashy")
    with pytest.raises(ValueError), experiment.start_logging() as run:
        raise ValueError("loss is NaN at step 300")
    details = run.get_details()
    assert details["status"] == "Failed"
    assert details["error"] == {"message": "loss is NaN at step 300", "code": "ValueError"}
    with experiment.start_logging() as finished_inside:
        finished_inside.fail("stopped early")  # the context manager leaves it Failed
    assert finished_inside.get_status() == "Failed"


def test_get_context_in_a_subprocess(ws: Workspace) -> None:
    run = Experiment(ws, "spawn").start_logging(tags={"launcher": "slurm"})
    script = textwrap.dedent(
        """
        from consumers.client import Run

        run = Run.get_context()
        run.tag("worker", "rank-0")
        child = run.child_run("shard")
        child.complete()
        print(run.id, run.experiment.name, run.workspace.name, sorted(run.get_tags()))
        run.complete()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
    env |= run.environment()
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [run.id, "spawn", "ml-team", "['launcher',", "'worker']"]
    # The child process published those; this process waits for the consumer to store them.
    wait_for(lambda: run.get_status() == "Completed")
    assert run.get_tags() == {"launcher": "slurm", "worker": "rank-0"}
    assert [kid.get_status() for kid in run.get_children()] == ["Completed"]
    with pytest.raises(RunwatchError, match="RUNWATCH_RUN_ID is not set"):
        Run.get_context({})


def _labels_round_trip(topics: Topics, url: str, rules_dir: Path) -> None:
    """A rule matching every status change: updates must raise no alert of their own."""
    (rules_dir / "all.yaml").write_text(
        "rules:\n  - name: every-change\n    when: {}\n    notify: [hook]\n"
    )
    settings = settings_for(topics, url).model_copy(update={"rules_dir": rules_dir})
    with (
        RunningService(settings) as running,
        Workspace("ml-team", settings, consistency_timeout=20) as ws,
    ):
        run = Experiment(ws, "labels").start_logging()
        for step in range(10):
            run.tag("step", str(step))
        run.tag("temporary")
        run.remove_tag("temporary")
        run.set_description("lr sweep, 8 GPUs")
        run.add_properties({"seed": 7})
        run.fail("boom")
        assert run.get_tags() == {"step": "9"}
        assert run.get_properties() == {"seed": "7"}
        assert run.description == "lr sweep, 8 GPUs"
        store = ws.store
        assert stored_statuses(store, run.id) == ["Running", "Failed"]
        wait_for(lambda: running.metric("runwatch_run_updates_total") == 14)
        failed = {"format": "native", "status": "Failed"}
        wait_for(lambda: running.metric("runwatch_events_total", **failed) == 1)
        assert running.metric("runwatch_events_total", format="native", status="Running") == 1
        assert running.metric("runwatch_alerts_total", rule="every-change", severity="3") == 2
        with store.engine.connect() as conn:
            alerted = conn.execute(
                select(notifications.c.status).where(notifications.c.run_id == run.id)
            ).all()
        assert sorted(row.status for row in alerted) == ["Failed", "Running"]


def test_tag_and_property_changes_are_stored_in_order_and_never_alert(
    topics: Topics, store: Store, store_url: str, tmp_path: Path
) -> None:
    _labels_round_trip(topics, store_url, tmp_path)


def test_tag_and_property_changes_on_postgresql(
    topics: Topics, pg_url: str, tmp_path: Path
) -> None:
    _labels_round_trip(topics, pg_url, tmp_path)


def test_reading_a_run_that_is_not_stored_says_so(
    running: RunningService, topics: Topics, store_url: str
) -> None:
    settings = settings_for(topics, store_url)
    with (
        Workspace("ml-team", settings, consistency_timeout=0.2) as ws,
        pytest.raises(RunNotFoundError, match="no-such-run is not in the store"),
    ):
        Run.attach(ws, "no-such-run")


def run_cli(
    capsys: pytest.CaptureFixture[str], topics: Topics, store_url: str, *argv: str
) -> tuple[int, str, str]:
    connection = ["--bootstrap", topics.bootstrap, "--topic", topics.topic, "--store", store_url]
    code = main([*argv, *connection, "--wait", "20"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_parity(
    running: RunningService, topics: Topics, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys,
        topics,
        store_url,
        "run",
        "start",
        "--experiment",
        "shell",
        "--tag",
        "owner=ops",
        "--property",
        "author=azureml-user",
    )
    assert code == 0
    run_id = out.strip()
    code, out, _ = run_cli(
        capsys,
        topics,
        store_url,
        "run",
        "start",
        "--experiment",
        "shell",
        "--parent",
        run_id,
        "--tag",
        "step=eval",
        "--description",
        "evaluate",
    )
    assert code == 0
    child_id = out.strip()
    code, _, err = run_cli(
        capsys,
        topics,
        store_url,
        "run",
        "update",
        run_id,
        "--add-tag",
        "quality=fantastic run",
        "--description",
        "from bash",
    )
    assert code == 0, err
    code, _, err = run_cli(
        capsys, topics, store_url, "run", "update", run_id, "--add-property", "author=me"
    )
    assert code == 1 and "write-once" in err
    assert run_cli(capsys, topics, store_url, "run", "fail", child_id, "--error", "OOM")[0] == 0
    assert run_cli(capsys, topics, store_url, "run", "complete", run_id)[0] == 0
    code, out, _ = run_cli(capsys, topics, store_url, "run", "show", run_id)
    shown = orjson.loads(out)
    assert shown["status"] == "Completed"
    assert shown["tags"] == {"owner": "ops", "quality": "fantastic run"}
    assert shown["description"] == "from bash"
    code, out, _ = run_cli(capsys, topics, store_url, "run", "show", child_id)
    child = orjson.loads(out)
    assert child["parentRunId"] == run_id and child["tags"] == {"step": "eval"}
    assert child["description"] == "evaluate"
    assert child["error"] == {"message": "OOM", "code": None}
    code, out, _ = run_cli(
        capsys,
        topics,
        store_url,
        "run",
        "list",
        "--experiment",
        "shell",
        "--include-children",
        "--query",
        "[?properties.author=='azureml-user' && tags.quality=='fantastic run']",
        "-o",
        "json",
    )
    assert code == 0
    assert [r["runId"] for r in orjson.loads(out)] == [run_id]
    code, out, _ = run_cli(
        capsys,
        topics,
        store_url,
        "run",
        "list",
        "--experiment",
        "shell",
        "--include-children",
        "--status",
        "Failed",
        "-o",
        "json",
    )
    assert [r["runId"] for r in orjson.loads(out)] == [child_id]
    code, out, _ = run_cli(capsys, topics, store_url, "run", "start", "--experiment", "shell")
    other = out.strip()
    assert run_cli(capsys, topics, store_url, "run", "cancel", other)[0] == 0
    code, out, _ = run_cli(capsys, topics, store_url, "run", "show", other, "-o", "table")
    assert "CancelRequested" in out and "Canceled" in out
    code, _, err = run_cli(capsys, topics, store_url, "run", "complete", other)
    assert code == 1 and "already Canceled" in err
    code, _, err = run_cli(
        capsys, topics, store_url, "run", "list", "--experiment", "shell", "--query", "[?"
    )
    assert code == 1 and "JMESPath" in err


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, store_url: str) -> Iterator[Store]:
    url = store_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = open_store(url, migrate=True)
    yield opened
    opened.dispose()


def test_the_store_applies_updates_in_topic_order_and_replays_to_the_same_state(
    any_store: Store,
) -> None:
    """Pure store level: no broker needed to pin down the ordering rule."""
    from consumers.model.events import RunStatusEvent
    from consumers.model.updates import RunUpdate
    from consumers.store.queries import RunFilter, list_runs

    t0 = datetime(2026, 11, 1, 12, tzinfo=UTC)

    def status(name: str, seconds: int, tags: dict[str, str | None]) -> RunStatusEvent:
        return RunStatusEvent.model_validate(
            {"TimeGenerated": t0 + timedelta(seconds=seconds), "RunId": "r", "Status": name}
            | {"ExperimentName": "e", "Tags": tags}
        )

    def update(seconds: int, **change: object) -> RunUpdate:
        return RunUpdate.model_validate(
            {"TimeGenerated": t0 + timedelta(seconds=seconds), "RunId": "r", **change}
        )

    completed = status("Completed", 3, {"a": "1", "b": None})
    # Status events carry the labels at the time of the change, as the library sends them.
    completed = completed.model_copy(update={"Properties": {"seed": "7"}})
    batch = [status("Running", 0, {}), completed]
    updates = [
        (1, update(1, SetTags={"a": "1", "b": None}, AddProperties={"seed": "7"})),
        (2, update(4, RemoveTags=["b"], AddProperties={"seed": "8"}, Description="d")),
    ]
    for _ in range(2):  # a Kafka replay of the same batch changes nothing
        result = any_store.write_batch(batch, updates=updates)
        assert result.updates == 2
        [record] = list_runs(any_store, RunFilter(experiment="e"))
        assert record["status"] == "Completed"
        assert record["tags"] == {"a": "1"}
        assert record["properties"] == {"seed": "7"}  # write-once: the first value stays
    # An update for a run never seen gives a placeholder that any status event overrides.
    any_store.write_batch(
        [], updates=[(0, update(10, SetTags={"x": "y"}).model_copy(update={"RunId": "new"}))]
    )
    later = status("Queued", 5, {"x": "y"}).model_copy(update={"RunId": "new"})
    any_store.write_batch([later])
    with any_store.engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).where(events.c.RunId.in_(["r", "new"]))).scalar_one()
            == 3
        )
    [new] = [r for r in list_runs(any_store, RunFilter(experiment="e")) if r["runId"] == "new"]
    assert new["status"] == "Queued" and new["tags"] == {"x": "y"}


def test_update_records_decode_as_their_own_kind() -> None:
    from consumers.ingest.decoding import decode
    from consumers.model.errors import DecodeError
    from consumers.model.updates import RunUpdate

    update = RunUpdate.model_validate(
        {"TimeGenerated": "2026-11-01T12:00:00Z", "RunId": "r", "SetTags": {"k": None}}
    )
    decoded = decode(update.to_json())
    assert decoded.events == () and decoded.updates == (update,)
    for bad, reason in (
        (b'{"RunUpdate": {"RunId": "r"}}', "TimeGenerated"),
        (
            b'{"RunUpdate": {"TimeGenerated": "2026-11-01T12:00:00Z", "RunId": "r", "Oops": 1}}',
            "Oops",
        ),
        (b'{"RunUpdate": {}, "Status": "Failed"}', "beside"),
    ):
        with pytest.raises(DecodeError, match=reason) as caught:
            decode(bad)
        assert caught.value.reason == "schema"


def test_a_bad_update_is_dead_lettered_and_the_rest_is_stored(
    topics: Topics, service: Callable[..., RunningService], store: Store
) -> None:
    from consumers.model.events import RunStatusEvent
    from consumers.model.updates import RunUpdate
    from consumers.store.schema import dead_letters

    at = datetime(2026, 11, 1, 12, tzinfo=UTC)
    started = RunStatusEvent.model_validate(
        {"TimeGenerated": at, "RunId": "r1", "Status": "Running", "ExperimentName": "e"}
    )
    tagged = RunUpdate(TimeGenerated=at + timedelta(seconds=1), RunId="r1", SetTags={"k": "v"})
    bad = b'{"RunUpdate": {"TimeGenerated": "yesterday", "RunId": "r1", "SetTags": {"k": "x"}}}'
    topics.produce([started.to_json(), bad, tagged.to_json()], keys=[b"r1"] * 3)
    with service() as running:
        wait_for(lambda: running.metric("runwatch_run_updates_total") == 1)
        wait_for(lambda: running.metric("runwatch_dead_letters_total", reason="schema") == 1)
    with store.engine.connect() as conn:
        [letter] = conn.execute(select(dead_letters)).all()
    assert "RunUpdate: TimeGenerated" in letter.Error
    from consumers.store.queries import RunFilter, list_runs

    [run] = list_runs(store, RunFilter())
    assert run["status"] == "Running" and run["tags"] == {"k": "v"}
