"""PostgreSQL's batch write: rows COPY'd into a session's temporary table, then moved on by
one set-based statement per table.

Why: multi-row `INSERT ... VALUES` carried 27 bound parameters per event (6,912 per
statement), and handling them cost the replica ~150 us of its own CPU per event, under the
GIL that decoding needs too: 4-5k events/s per replica (benchmarks/store_write.py). COPY
streams the rows in psycopg's C text format (~9 us per event), and one
`INSERT ... SELECT ... ON CONFLICT` then does the idempotent insert (or the order-proof run
upsert) for the whole batch. Only
PostgreSQL has COPY: SQLite keeps the multi-row VALUES path of consumers/store/writer.py,
which is already one native step per 256 rows there (the dialect branch is in writer.py).

The staged columns are derived from the table definitions (consumers/store/schema.py), so a
column added there is staged, copied and inserted without another edit here. A stage's name
carries a digest of its columns: a session that outlives a schema change never reuses a
stage of the old shape.

Measured and not kept: staging one JSON document per row (one orjson call per row, one COPY
write, `json_populate_record` on the server) cost more client CPU (9.4-9.7 against 8.7-8.8
us per event) and halved what the database took (26k against 41k events/s), so the rows go
typed, through psycopg's C `write_row`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, DateTime, Table, column, delete, exc, table

from consumers.store.timetext import postgres_time


@dataclass(frozen=True, slots=True)
class Stage:
    """A temporary table shaped like `columns` of `target`; the statement reading it empties
    it, and so does every commit (ON COMMIT DELETE ROWS), whatever failed in between."""

    target: Table
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        digest = zlib.crc32(",".join(self.columns).encode())
        return f"runwatch_stage_{self.target.name}_{digest:08x}"

    def drained(self) -> Any:
        """The staged rows, for the statement that moves them on, which empties the stage as
        it reads it (`DELETE ... RETURNING` in a CTE): a second COPY in the same
        transaction (a batch cut by run updates) then holds only its own rows."""
        types = {c.name: c.type for c in self.target.columns}
        stage = table(self.name, *(column(name, types[name]) for name in self.columns))
        return delete(stage).returning(*stage.c).cte(f"{self.name}_rows")

    def copy(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Create the stage if this session has none yet, and COPY `rows` into it (in this
        transaction: a rollback leaves it empty, a commit empties it)."""
        names = ", ".join(_quote(name) for name in self.columns)
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.name} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM {_quote(self.target.name)} WITH NO DATA"
        )
        import psycopg  # PostgreSQL only: a SQLite service never loads it

        values = _row_values(self.target, self.columns)
        statement = f"COPY {self.name} ({names}) FROM STDIN"
        raw: Any = conn.connection.driver_connection
        try:
            with raw.cursor() as cursor, cursor.copy(statement) as copy:
                write = copy.write_row
                for row in rows:
                    write(values(row))
        except psycopg.Error as error:
            # The same exception classes as every other statement's (retriable or not,
            # consumers/store/engine.py decides), and a dropped connection is not reused.
            failure: Any = error
            if conn.dialect.is_disconnect(failure, raw, None):
                conn.invalidate(error)
            raise exc.DBAPIError.instance(
                statement, None, error, psycopg.Error, dialect=conn.dialect
            ) from error


def _row_values(target: Table, columns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """A row's values in column order, JSON columns as their text and times as theirs
    (COPY's text format; consumers/store/timetext.py says why times are not left to the
    driver)."""
    pick = itemgetter(*columns)
    convert: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(columns):
        kind = target.c[name].type
        if isinstance(kind, JSON):
            convert.append((index, json_column_text))
        elif isinstance(kind, DateTime):
            convert.append((index, postgres_time))
    if not convert:
        return pick

    def values(row: Mapping[str, Any]) -> list[Any]:
        out = list(pick(row))
        for index, function in convert:
            out[index] = function(out[index])
        return out

    return values


def json_column_text(value: Any) -> str:
    """A JSON column's value as the text both stores take."""
    return orjson.dumps(value).decode()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
