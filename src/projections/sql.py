"""The views' SQL on SQLite and PostgreSQL: tables, batched upserts, the view lock, tracking.

Views live in the log's own database (and PostgreSQL schema), beside the library's tracking
table, so a batch's rows and its tracking record commit in one transaction: the library's
tracking recorder writes the record (`_insert_tracking`) on the batch's own cursor.

A view's commit needs to be atomic, not durable: a commit lost to a power cut takes its
tracking record with it, and the batch is replayed from the log. So view transactions commit
without waiting for the disk (SQLite `synchronous = NORMAL` in WAL mode, on connections of
their own; PostgreSQL `synchronous_commit = off` for the transaction); the engine's commits
stay durable.

A batch runs under the views' write lock: SQLite's `BEGIN IMMEDIATE` (one writer per file) or
PostgreSQL transaction-level advisory locks, one per view. The lock makes a batch's read of its
tracking position and its writes one step, so two projectors, or a projector and a rebuild
swapping a table in, never apply the same events twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from eventsourcing.persistence import PersistenceError, Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.rows import tuple_row

from engine.storage import SQLITE_VIEWS, VIEW_TRACKING_TABLE, view_lock_key
from engine.store import RunStore
from projections.errors import ViewStoreError

Row = Sequence[Any]

@dataclass(frozen=True)
class Table:
    """A view table's shape. Timestamps are ISO 8601 text on SQLite, timestamptz on PostgreSQL."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


@dataclass
class Bound:
    """A table spec bound to its SQL name (the live table or its rebuild shadow)."""

    spec: Table
    name: str
    qname: str
    _sql: dict[tuple[tuple[str, ...], bool], str] = field(default_factory=dict)


Rows = Callable[[], list[list[Any]]]


class Tx:
    """One write transaction of the views: reads, upserts and tracking records.

    On PostgreSQL it runs in pipeline mode: statements whose results nobody waits for (the
    locks, the upserts) travel with the next read, and `select` only sends its query, so the
    reads of several views cost one round trip. The results come when the returned `Rows` is
    called.
    """

    def __init__(self, db: ViewDB, cursor: Any, new_cursor: Callable[..., Any]) -> None:
        self.db = db
        self.cursor = cursor
        self._new_cursor = new_cursor

    def execute(self, sql: str, params: Row = ()) -> None:
        self.cursor.execute(self.db.sql(sql), params)

    def fetch(self, sql: str, params: Row = ()) -> list[Row]:
        self.cursor.execute(self.db.sql(sql), params)
        rows: list[Row] = self.cursor.fetchall()
        return rows

    def select(
        self, table: Bound, columns: Sequence[str], keys: Sequence[str], where: str = ""
    ) -> Rows:
        """Rows of `table` whose first column (a run id) is one of `keys`, as Python values."""
        types = dict(table.spec.columns)
        convert = [self.db.from_db(types[c]) for c in columns]
        cols = ", ".join(columns)
        key = table.spec.columns[0][0]
        extra = f" AND {where}" if where else ""
        pending: list[Any] = []
        for chunk in _chunks(list(keys), 500):
            cursor = self._new_cursor()
            if self.db.is_sqlite:
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {cols} FROM {table.qname} WHERE {key} IN ({marks}){extra}"
                cursor.execute(sql, chunk)
                pending.append(cursor.fetchall())  # SQLite is in-process: nothing to wait for
            else:
                sql = f"SELECT {cols} FROM {table.qname} WHERE {key} = ANY(%s::uuid[]){extra}"
                cursor.execute(sql, [chunk])
                pending.append(cursor)

        def rows() -> list[list[Any]]:
            return [
                [f(v) for f, v in zip(convert, row, strict=True)]
                for done in pending
                for row in (done if isinstance(done, list) else done.fetchall())
            ]

        return rows

    def upsert(
        self, table: Bound, rows: list[Row], columns: Sequence[str] = (), *, add: bool = False
    ) -> None:
        """Insert rows, or on a key conflict overwrite the other columns (or add to them)."""
        if not rows:
            return
        cols = tuple(columns) or table.spec.column_names
        sql = table._sql.get((cols, add)) or self.db.upsert_sql(table, cols, add)
        table._sql[(cols, add)] = sql
        if self.db.is_sqlite:
            self.cursor.executemany(sql, rows)
        else:
            # The rows as one JSON array made by orjson (C): psycopg's dumping of one array
            # per column, in Python, took a quarter of a rebuild's own time on PostgreSQL.
            self.cursor.execute(sql, (orjson.dumps(rows).decode(),))

    def positions(self, keys: Sequence[str]) -> dict[str, int]:
        """The tracking positions of `keys` (0 if never tracked), in one query."""
        return self.db.read_positions(self.cursor, keys)

    def track(self, recorder: TrackingRecorder, key: str, position: int) -> None:
        """Record `position` with a view's tracking recorder, in this transaction."""
        cursor = self.cursor if self.db.is_sqlite else self._new_cursor(dict_rows=True)
        recorder._insert_tracking(cursor, Tracking(key, position))  # type: ignore[attr-defined]


class ViewDB:
    """The database of the log, seen as the home of the views."""

    def __init__(self, store: RunStore) -> None:
        self.is_sqlite = store.location.kind == "sqlite"
        self.datastore: SQLiteDatastore | PostgresDatastore
        if self.is_sqlite:
            # Connections of their own: the pragmas below must not reach the engine's.
            env = store.location.env
            self.datastore = SQLiteDatastore(
                env["SQLITE_DBNAME"], lock_timeout=int(env.get("SQLITE_LOCK_TIMEOUT") or 5)
            )
        else:
            self.datastore = store.datastore
        self.dialect = store.dialect
        self.schema = "" if self.is_sqlite else store.location.schema
        with self.translated():
            self.recorder = self.tracking_recorder()
            self.recorder.create_table()
        self.tracking_table = self.dialect.view_tracking_table

    def close(self) -> None:
        if isinstance(self.datastore, SQLiteDatastore):
            self.datastore.close()

    def tracking_recorder(self) -> SQLiteTrackingRecorder | PostgresTrackingRecorder:
        """A tracking recorder over the shared tracking table (one per view)."""
        if isinstance(self.datastore, PostgresDatastore):
            return PostgresTrackingRecorder(self.datastore,
                                            tracking_table_name=VIEW_TRACKING_TABLE)
        return SQLiteTrackingRecorder(self.datastore)

    # -- SQL text --------------------------------------------------------------------------
    def sql(self, text: str) -> str:
        return self.dialect.qmarks(text)

    def q(self, name: str) -> str:
        return self.dialect.qualify(name)

    def bind(self, spec: Table, name: str) -> Bound:
        return Bound(spec, name, self.q(name))

    def upsert_sql(self, table: Bound, cols: tuple[str, ...], add: bool) -> str:
        key = table.spec.key
        rest = [c for c in cols if c not in key]
        sets = ", ".join(f"{c} = cur.{c} + excluded.{c}" if add else f"{c} = excluded.{c}"
                         for c in rest)
        conflict = f"DO UPDATE SET {sets}" if rest else "DO NOTHING"
        head = f"INSERT INTO {table.qname} AS cur ({', '.join(cols)})"
        if self.is_sqlite:
            values = f"VALUES ({', '.join('?' * len(cols))})"
        else:
            types = dict(table.spec.columns)
            casts = ", ".join(f"(r->>{i})::{self.dialect.column_type(types[c])}"
                              for i, c in enumerate(cols))
            values = f"SELECT {casts} FROM jsonb_array_elements(%s::jsonb) AS r"
        return f"{head} {values} ON CONFLICT ({', '.join(key)}) {conflict}"

    def from_db(self, kind: str) -> Callable[[Any], Any]:
        """Values as the views hold them: run ids and timestamps as text, on both stores."""
        if self.is_sqlite:
            return _same
        return _iso_or_none if kind == "ts" else _str_or_none if kind == "uuid" else _same

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def translated(self) -> Iterator[None]:
        """Driver errors become one `ViewStoreError`, here at the adapter."""
        try:
            yield
        except (PersistenceError, sqlite3.Error, psycopg.Error) as e:
            raise ViewStoreError(" ".join(str(e).split()) or type(e).__name__) from e

    @contextmanager
    def transaction(self, locks: Sequence[str] = (), *, ddl: bool = False) -> Iterator[Tx]:
        """A write transaction holding the write lock of the views named in `locks`.

        `ddl`: the transaction changes tables. It then runs out of pipeline mode: psycopg
        forgets its prepared statements when it sees a DROP or ALTER, which in a pipeline
        races with statements already sent.
        """
        with self.translated():
            if isinstance(self.datastore, SQLiteDatastore):
                with self.datastore.get_connection(commit=True) as conn:
                    cursor = conn.cursor()
                    for pragma in SQLITE_VIEWS:
                        cursor.execute(pragma)
                    cursor.execute("BEGIN IMMEDIATE")
                    try:
                        yield Tx(self, cursor, conn.cursor)
                    except BaseException:
                        conn.rollback()
                        raise
                    conn.commit()
            else:
                with (
                    self.datastore.get_connection() as pg,
                    nullcontext() if ddl else pg.pipeline(),
                    pg.transaction(),
                ):
                    pg_cursor = pg.cursor(row_factory=tuple_row)
                    pg_cursor.execute("SET LOCAL synchronous_commit = off")
                    for lock in sorted({view_lock_key(self.schema, name) for name in locks}):
                        pg_cursor.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))

                    def new_cursor(dict_rows: bool = False) -> Any:
                        return pg.cursor() if dict_rows else pg.cursor(row_factory=tuple_row)

                    yield Tx(self, pg_cursor, new_cursor)

    def positions(self, keys: Sequence[str]) -> dict[str, int]:
        """The tracking positions of `keys` (0 for a key never tracked), without a lock."""
        with self.translated():
            if isinstance(self.datastore, SQLiteDatastore):
                with self.datastore.transaction(commit=False) as c:
                    return self.read_positions(c, keys)
            with self.datastore.get_connection() as pg:
                return self.read_positions(pg.cursor(row_factory=tuple_row), keys)

    def read_positions(self, cursor: Any, keys: Sequence[str]) -> dict[str, int]:
        marks = ", ".join("?" * len(keys))
        cursor.execute(
            self.sql(
                f"SELECT application_name, notification_id FROM {self.tracking_table} "
                f"WHERE application_name IN ({marks})"
            ),
            list(keys),
        )
        found = {name: pos for name, pos in cursor.fetchall()}
        return {key: found.get(key) or 0 for key in keys}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _same(value: Any) -> Any:
    return value


def _str_or_none(value: Any) -> Any:
    return None if value is None else str(value)


def _iso_or_none(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
