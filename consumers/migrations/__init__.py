"""Alembic migrations, run programmatically by `runwatch db upgrade` and at start-up."""
