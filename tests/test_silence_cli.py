"""`runwatch silence add|list|expire` as a user runs them (real processes, a real store)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from consumers.store import open_store
from tests.noise_harness import Bench, Clock
from tests.test_cli import failed, ok, runwatch


def test_silence_add_list_expire(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    ok(runwatch("db", "upgrade", "--store", url))
    added = ok(
        runwatch(
            "silence", "add", "--match", "workspace=ws-a", "-m", "rule=~run-.*",
            "--for", "2h", "--comment", "GPU maintenance", "--author", "ops", "--store", url,
        )
    )  # fmt: skip
    assert added.startswith("silence ") and "workspace=ws-a rule=~run-.*" in added
    silence_id = added.split()[1].rstrip(":")

    store = open_store(url)
    try:  # the service's write path, with the silence now in the store
        bench = Bench(store, {}, clock=Clock(datetime.now(UTC)))
        bench.write(bench.alert("r1", "ok"), bench.alert("r2", "ok", workspace="ws-b"))
        assert bench.states()[("r1", "ok")] == ("silenced", f"silence:{silence_id}")
    finally:
        store.dispose()

    table = ok(runwatch("silence", "list", "--store", url))
    header, row = table.strip().splitlines()
    assert header.split()[:4] == ["ID", "STATE", "ENDS", "SILENCED"]
    assert row.split()[:2] == [silence_id, "active"]
    assert "ops" in row and row.endswith("# GPU maintenance")
    [listed] = orjson.loads(ok(runwatch("silence", "list", "-o", "json", "--store", url)))
    assert listed["silenced"] == 1 and listed["active"] is True
    assert listed["matchers"] == ["workspace=ws-a", "rule=~run-.*"]

    assert ok(runwatch("silence", "expire", silence_id, "--store", url)).strip() == (
        f"silence {silence_id} expired"
    )
    failed(runwatch("silence", "expire", silence_id, "--store", url), "no active silence")
    assert ok(runwatch("silence", "list", "--store", url)).strip() == "No active silences."
    assert "expired" in ok(runwatch("silence", "list", "--all", "--store", url))


def test_silence_add_rejects_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    ok(runwatch("db", "upgrade", "--store", url))
    add = ("silence", "add", "--comment", "x", "--store", url)
    failed(runwatch(*add, "--for", "2h"), "at least one --match")
    failed(runwatch(*add, "--for", "2h", "-m", "workspace"), "bad matcher", "name=value")
    failed(runwatch(*add, "--for", "2h", "-m", "run_id=~("), "bad regex")
    failed(runwatch(*add, "--for", "2", "-m", "a=b"), "--for", "duration")
    failed(runwatch(*add, "--for", "1h", "-m", "a=b", "--start", "soon"), "--start")
    assert ok(runwatch("silence", "list", "--all", "--store", url)).strip() == "No silences."
