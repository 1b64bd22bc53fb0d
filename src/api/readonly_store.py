"""Read-only connections to the log's database: the API cannot write, whatever its code does.

SQLite is opened with `mode=ro` (one connection per thread, since a sqlite3 connection is not
shared between threads safely); PostgreSQL through a small pool whose sessions start with
`default_transaction_read_only=on` and a statement timeout, so a slow query cannot pile up
requests. Driver errors become `StoreReadError` here, once, at the adapter.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from engine.storage import (
    Dialect,
    StoreLocation,
    connect_sqlite_read_only,
    postgres_kwargs,
)

Row = tuple[Any, ...]


class StoreReadError(Exception):
    """The database could not answer a read (down, missing, or its tables are not there)."""

    def __init__(self, reason: str, *, missing_table: bool = False) -> None:
        self.reason = reason
        self.missing_table = missing_table
        super().__init__(reason)


class ReadOnlyStore(ABC):
    """Runs read queries written with `?` placeholders on either backend."""

    is_sqlite: bool
    dialect: Dialect

    def qualify(self, table: str) -> str:
        """The table's name as SQL, in the store's schema on PostgreSQL."""
        return self.dialect.qualify(table)

    @abstractmethod
    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one read query."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection(s)."""


class SQLiteReadOnlyStore(ReadOnlyStore):
    is_sqlite = True

    def __init__(self, location: StoreLocation, *, timeout_s: float) -> None:
        self.location = location
        self.dialect = Dialect.of(location)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_sqlite_read_only(self.location, timeout_s=self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return self._connection().execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as e:
            text = str(e)
            raise StoreReadError(text, missing_table="no such table" in text) from e
        except sqlite3.Error as e:
            raise StoreReadError(str(e)) from e

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class PostgresReadOnlyStore(ReadOnlyStore):
    is_sqlite = False

    def __init__(self, location: StoreLocation, *, timeout_s: float, pool_size: int) -> None:
        self.dialect = Dialect.of(location)
        self.timeout_s = timeout_s
        self.pool = ConnectionPool(
            kwargs={
                **postgres_kwargs(location, "api", read_only=True,
                                  statement_timeout_s=timeout_s),
                "autocommit": True,
            },
            min_size=1,
            max_size=pool_size,
            open=False,
            name="stepstone-api",
        )
        # Opened without waiting: the API starts (and /healthz answers) while the database
        # is still coming up; reads fail with 503 until it is there.
        self.pool.open(wait=False)

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            with self.pool.connection(timeout=self.timeout_s) as conn:
                cur = conn.cursor(row_factory=tuple_row)
                cur.execute(self.dialect.qmarks(sql), tuple(params), prepare=True)
                return cur.fetchall()
        except psycopg.errors.UndefinedTable as e:
            raise StoreReadError(_one_line(e), missing_table=True) from e
        except (psycopg.Error, PoolTimeout) as e:
            raise StoreReadError(_one_line(e)) from e

    def close(self) -> None:
        self.pool.close()


def open_read_only(
    location: StoreLocation, *, timeout_s: float = 5.0, pool_size: int = 8
) -> ReadOnlyStore:
    """A read-only view of the store at `location`; nothing is opened until the first read."""
    if location.kind == "sqlite":
        return SQLiteReadOnlyStore(location, timeout_s=timeout_s)
    return PostgresReadOnlyStore(location, timeout_s=timeout_s, pool_size=pool_size)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
