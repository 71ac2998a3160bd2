"""The client library stays light for the training script that imports it.

`import consumers.client` loads no server-side layer and defers kafka-python and SQLAlchemy to
first use; a script that only publishes never loads SQLAlchemy or Alembic, one that only reads
never loads kafka-python or Alembic. Checked by module name in a fresh interpreter: the wall
time is not asserted (the machine is shared), the README gives the measured figure.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from consumers.store import Store
from tests.conftest import Topics

SERVER_SIDE = (
    "consumers.rules",
    "consumers.noise",
    "consumers.dispatch",
    "consumers.telemetry.metrics",
    "consumers.service.app",
    "consumers.ingest.ingestor",
    "consumers.notify.templating",
    "consumers.notify",
    "prometheus_client",
    "aiohttp",
    "jinja2",
    "alembic",
)
DEFERRED = (
    "consumers.store",
    "consumers.ingest.producer",
    "consumers.config",
    "kafka",
    "sqlalchemy",
)
DEFERRED += ("psycopg",)
CLI = ("cli/main", "cli/run", "cli/options", "cli/run_exec", "entry")


def loaded_after(script: str, env: dict[str, str] | None = None) -> set[str]:
    code = textwrap.dedent(script) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def among(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_importing_the_client_loads_no_server_side_layer() -> None:
    loaded = loaded_after("import consumers.client")
    assert among(loaded, SERVER_SIDE) == []
    assert among(loaded, DEFERRED) == []


def _env(topics: Topics, store_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWATCH_")}
    return env | {
        "RUNWATCH_KAFKA__BOOTSTRAP_SERVERS": topics.bootstrap,
        "RUNWATCH_KAFKA__TOPIC": topics.topic,
        "RUNWATCH_STORE__URL": store_url,
    }


def test_publishing_loads_no_database_layer(topics: Topics, store_url: str) -> None:
    script = """
        from consumers.client import Experiment, Workspace

        with Workspace("light") as ws:
            run = Experiment(ws, "publish-only").start_logging()
            run.tag("k", "v")
            run.complete()
    """
    loaded = loaded_after(script, _env(topics, store_url))
    assert "kafka" in loaded
    assert among(loaded, ("sqlalchemy", "alembic", "psycopg", "consumers.store")) == []


def test_reading_loads_neither_kafka_nor_alembic(
    store: Store, topics: Topics, store_url: str
) -> None:
    script = """
        from consumers.client import Experiment, Workspace

        with Workspace("light") as ws:
            assert Experiment(ws, "read-only").get_runs() == []
    """
    loaded = loaded_after(script, _env(topics, store_url))
    assert "sqlalchemy" in loaded
    assert (
        among(loaded, ("kafka", "alembic", "consumers.ingest.producer", "consumers.store.writer"))
        == []
    )


def _imports(path: Path) -> set[str]:
    """Every runwatch module a file imports, at the top, in functions or for types only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("consumers.")}


def test_no_import_cycles_in_the_client_and_the_run_commands() -> None:
    root = Path(__file__).parent.parent / "consumers"
    files = [*sorted((root / "client").glob("*.py")), *(root / f"{n}.py" for n in CLI)]
    modules = {
        ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(
            ".__init__"
        ): path
        for path in files
    }
    graph = {name: _imports(path) & modules.keys() for name, path in modules.items()}

    def cycle_from(start: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph[start]):
            if nxt == path[0]:
                return (*path, nxt)
            if nxt not in path:
                found = cycle_from(nxt, (*path, nxt))
                if found:
                    return found
        return None

    cycles = [c for name in graph if (c := cycle_from(name, (name,)))]
    assert cycles == []
