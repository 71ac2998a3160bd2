"""The tables the code declares (consumers/store/schema.py) are exactly the ones the
migrations build: `alembic check` in a test, on SQLite and PostgreSQL (whose events
partitions are made at run time, not declared)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from consumers.store import open_store
from consumers.store.schema import metadata


def _differences(url: str) -> list[Any]:
    store = open_store(url, migrate=True)
    try:
        with store.engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        store.dispose()


def _table(difference: Any) -> str:
    item = difference[1]
    return str(getattr(item, "name", "") if difference[0].endswith("table") else item.table.name)


def test_migrations_build_the_declared_schema_on_sqlite(store_url: str) -> None:
    assert _differences(store_url) == []
    assert {"silences", "notification_groups", "inhibitions"} <= set(metadata.tables)


def test_migrations_build_the_declared_schema_on_postgresql(pg_url: str) -> None:
    left = [d for d in _differences(pg_url) if not _table(d).startswith("events_")]
    assert left == []
