"""The store: SQL adapters only, for SQLite and PostgreSQL from one code path. Every state
change goes through one transaction here; `migrate` opens a store for the service (schema
checked or upgraded), `engine.open_reader` for a reader that must not load Alembic."""

from consumers.store.engine import Store, open_reader
from consumers.store.migrate import open_store

__all__ = ["Store", "open_reader", "open_store"]
