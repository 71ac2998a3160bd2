"""`Run.wait_for_completion` on PostgreSQL is woken by the ingest transaction's NOTIFY (not by
polling), and the waits' edges: a timeout, raise_on_error, a run not stored yet. The exit
codes of `runwatch run wait` are in tests/test_exec.py."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.client import Experiment, Workspace
from consumers.client import wait as wait_module
from consumers.client.wait import RunFailedError, WaitTimeoutError
from consumers.config.settings import Settings, load_settings
from consumers.store import open_store
from consumers.store.listen import RUNS_CHANNEL
from tests.conftest import RUNWATCH, Topics, serve, write_config


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}


def _served(tmp_path: Path, topics: Topics, url: str) -> Iterator[tuple[Path, Settings]]:
    config = write_config(tmp_path / "runwatch.yaml", topics, url)
    open_store(url, migrate=True).dispose()
    process = serve(config)
    try:
        yield config, load_settings(config)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def on_pg(tmp_path: Path, topics: Topics, fresh_pg: str) -> Iterator[tuple[Path, Settings]]:
    yield from _served(tmp_path, topics, fresh_pg)


@pytest.fixture
def on_sqlite(tmp_path: Path, topics: Topics, store_url: str) -> Iterator[tuple[Path, Settings]]:
    yield from _served(tmp_path, topics, store_url)


def _elsewhere(config: Path, *args: str) -> None:
    """A `runwatch run` command: another process, which this one's ledger knows nothing of."""
    done = subprocess.run(
        [RUNWATCH, "run", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_ingest_transaction_notifies_the_runs_it_stored(
    on_pg: tuple[Path, Settings],
) -> None:
    config, settings = on_pg
    with psycopg.connect(settings.store.url, autocommit=True) as conn:
        conn.execute(f"LISTEN {RUNS_CHANNEL}")
        _elsewhere(config, "start", "--experiment", "pg", "--run-id", "pg-note")
        payloads = [n.payload for n in conn.notifies(timeout=30, stop_after=1)]
    assert payloads == ["pg-note"]


def test_wait_for_completion_on_postgresql_is_woken_by_notify(
    on_pg: tuple[Path, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, settings = on_pg
    # Without a NOTIFY nothing would wake the waiter before the test's own timeout.
    monkeypatch.setattr(wait_module, "_RECHECK_S", 300.0)
    listening = threading.Event()
    original = wait_module._Listen.wait

    def spy(self: Any, limit: float | None) -> None:
        listening.set()
        original(self, limit)

    monkeypatch.setattr(wait_module._Listen, "wait", spy)
    with Workspace("pg", settings, consistency_timeout=30) as ws:
        run = Experiment(ws, "pg-wait").start_logging()
        assert run.get_status() == "Running"
        result: dict[str, Any] = {}

        def waiter() -> None:
            result["details"] = run.wait_for_completion(timeout=120)

        thread = threading.Thread(target=waiter)
        thread.start()
        assert listening.wait(30)  # it looked, saw Running, and waits on the LISTEN
        _elsewhere(config, "complete", run.id)
        thread.join(30)
        assert not thread.is_alive()
    assert result["details"]["status"] == "Completed"
    assert run.status == "Completed"


def test_waits_time_out_and_raise_the_run_s_error(on_sqlite: tuple[Path, Settings]) -> None:
    config, settings = on_sqlite
    with Workspace("lite", settings, consistency_timeout=30) as ws:
        run = Experiment(ws, "waits").start_logging()
        with pytest.raises(WaitTimeoutError, match=r"has not ended within 0\.3s"):
            run.wait_for_completion(timeout=0.3)
        _elsewhere(config, "fail", run.id, "--error", "CUDA out of memory", "--error-code", "OOM")
        with pytest.raises(RunFailedError) as raised:
            run.wait_for_completion(timeout=60)
        assert raised.value.error == "CUDA out of memory"
        assert raised.value.error_code == "OOM"
        assert str(raised.value) == f"run {run.id} Failed: CUDA out of memory"
        assert raised.value.retriable is False
        details = run.wait_for_completion(timeout=60, raise_on_error=False)
        assert details["error"] == {"message": "CUDA out of memory", "code": "OOM"}
