"""SQLAlchemy's module for a dialect's own statements (INSERT ... ON CONFLICT), imported on
first use: a SQLite service never loads the PostgreSQL dialect (2.3 MB of Python objects)."""

from __future__ import annotations

import importlib
from typing import Any


def dialect_module(name: str) -> Any:
    """`sqlalchemy.dialects.postgresql` for "postgresql", else `sqlalchemy.dialects.sqlite`;
    both have `insert()` with `on_conflict_do_nothing()` / `on_conflict_do_update()`."""
    which = "postgresql" if name == "postgresql" else "sqlite"
    return importlib.import_module(f"sqlalchemy.dialects.{which}")
