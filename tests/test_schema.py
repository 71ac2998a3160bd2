"""The tables the code declares (consumers/store/schema.py) are exactly the ones the
migrations build: `alembic check` in a test, on SQLite and PostgreSQL (whose events
partitions are made at run time, not declared)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from consumers.store import open_store
from consumers.store.migrate import head_revision, revision
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


def _upgrade_from_0005_with_a_row(url: str) -> tuple[Any, Any]:
    """A store at the revision before 0007_causes holding an event and a run, upgraded: the
    rows stay, with no cause and no ARM ID (nothing classified them)."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from consumers.store.migrate import _alembic_config

    engine = create_engine(url)
    try:
        config = _alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0005_rules")
        with engine.begin() as conn:
            conn.execute(
                text(
                    'INSERT INTO events ("TimeGenerated", "RunId", "Status", "Level", "Tags", '
                    "\"Properties\", \"IngestedAt\") VALUES (:t, 'r1', 'Failed', 'Error', "
                    "'{}', '{}', :t)"
                ),
                {"t": "2026-01-01 00:00:00"},
            )
            conn.execute(
                text(
                    'INSERT INTO runs ("RunId", "Status", "StatusTime", "StatusRank", "Tags", '
                    '"Properties", "FirstSeen", "LastSeen") VALUES (\'r1\', \'Failed\', :t, 9, '
                    "'{}', '{}', :t, :t)"
                ),
                {"t": "2026-01-01 00:00:00"},
            )
    finally:
        engine.dispose()
    store = open_store(url, migrate=True)
    try:
        assert revision(store) == head_revision() == "0011_baseline_index"  # 0007_causes and after
        with store.engine.connect() as conn:
            event = conn.execute(
                text('SELECT "RunId", "ResourceId", cause, cause_detail FROM events')
            ).one()
            run = conn.execute(text('SELECT "RunId", cause FROM runs')).one()
        return tuple(event), tuple(run)
    finally:
        store.dispose()


def test_0007_causes_keeps_existing_rows_on_sqlite(store_url: str) -> None:
    assert _upgrade_from_0005_with_a_row(store_url) == (("r1", None, None, None), ("r1", None))


def test_0007_causes_keeps_existing_rows_on_postgresql(fresh_pg: str) -> None:
    assert _upgrade_from_0005_with_a_row(fresh_pg) == (("r1", None, None, None), ("r1", None))


def test_the_baseline_index_is_partial_on_both_stores(store_url: str, pg_url: str) -> None:
    """The declaration leaves the predicate out (see ix_runs_completed in schema.py), so
    alembic check cannot see it: the migration must still have built a partial index."""
    queries = {
        store_url: "SELECT sql FROM sqlite_master WHERE name = 'ix_runs_completed'",
        pg_url: "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_runs_completed'",
    }
    for url, query in queries.items():
        store = open_store(url, migrate=True)
        try:
            with store.engine.connect() as conn:
                definition = str(conn.exec_driver_sql(query).scalar_one())
        finally:
            store.dispose()
        assert "WHERE" in definition.upper() and "Completed" in definition, definition
