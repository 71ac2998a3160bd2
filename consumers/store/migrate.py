"""Schema migrations (Alembic): the revision a store is at, upgrading it, refusing a schema
this build does not know, and `open_store`, which does one or the other before the service
writes. Apart from the engine so that a reader (the client library) never reaches Alembic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from consumers.model.errors import SchemaVersionError, StoreError
from consumers.store.engine import Store, handle

if TYPE_CHECKING:
    from alembic.config import Config


_MIGRATIONS = Path(__file__).parent.parent / "migrations"
_REVISION = re.compile(r"^revision = \"([^\"]+)\"$", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision = (.+)$", re.MULTILINE)


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def _file_heads() -> set[str]:
    """The revisions no shipped revision builds on, from the files' own `revision =` and
    `down_revision =` lines; empty when a file does not read that way (then Alembic decides)."""
    revisions: set[str] = set()
    below: set[str] = set()
    for path in (_MIGRATIONS / "versions").glob("[0-9]*.py"):
        source = path.read_text(encoding="utf-8")
        found, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if found is None or down is None:
            return set()
        revisions.add(found.group(1))
        below.update(re.findall(r"\"([^\"]+)\"", down.group(1)))
    return revisions - below


def _at_head(store: Store) -> bool:
    """The store is at this build's one head revision, read with plain SQL: `serve` then
    starts without importing Alembic, which (with Mako, Pygments and SQLAlchemy's PostgreSQL
    dialect it loads) holds ~24 MB of RSS for the life of the process. Anything else (no
    schema, an older or unknown revision, several heads) goes through Alembic as before."""
    heads = _file_heads()
    if len(heads) != 1:
        return False
    with store.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        stored = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return stored == list(heads)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


# Any constant shared by every runwatch build: the key of the migration advisory lock.
_MIGRATE_LOCK = 0x72756E7761746368  # "runwatch"


def revision(store: Store) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store: Store) -> None:
    """Apply the migrations this build has. Replicas starting together take turns (a
    PostgreSQL advisory lock held for the transaction); a schema newer than this build
    is refused, never touched."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = _alembic_config()
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current not in _known_revisions():
            raise SchemaVersionError(
                f"store {store.url} is at schema {current}, newer than this build "
                f"({head_revision()}); upgrade runwatch"
            )
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def check_schema(store: Store) -> None:
    """Refuse to run on a schema this build does not know: writing would corrupt it."""
    current, head = revision(store), head_revision()
    if current is None:
        raise SchemaVersionError(
            f"store {store.url} has no runwatch schema; run `runwatch db upgrade`"
        )
    if current != head:
        if current not in _known_revisions():
            raise SchemaVersionError(
                f"store {store.url} is at schema {current}, newer than this build ({head}); "
                "upgrade runwatch"
            )
        raise SchemaVersionError(
            f"store {store.url} is at schema {current}, this build needs {head}; "
            "run `runwatch db upgrade`"
        )


def open_store(
    url: str,
    *,
    migrate: bool = False,
    pool_size: int = 10,
    dead_letter_payload_max_bytes: int | None = None,
) -> Store:
    store = handle(url, pool_size, dead_letter_payload_max_bytes)
    try:
        if _at_head(store):
            pass  # the common start: nothing to migrate, and Alembic stays unloaded
        elif migrate:
            upgrade(store)
        else:
            check_schema(store)
    except SQLAlchemyError as exc:
        store.dispose()
        raise StoreError(f"cannot open store {store.url}: {exc}") from exc
    except BaseException:
        store.dispose()  # a refused schema must not leave pooled connections open
        raise
    return store
