"""Alembic revisions of the store schema, one file per change, applied in chain order by
consumers/store/migrate.py."""
