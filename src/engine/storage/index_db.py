"""The two databases the runnable index lives in, behind one small interface.

SQLite: one connection per process, `BEGIN IMMEDIATE` for claims. PostgreSQL: one connection,
reopened after it breaks, and an advisory lock for claims.

A PostgreSQL connection left idle across a server restart looks healthy until it is used, and
then fails. `retryable()` tells the caller whether that failure may be repeated on a fresh
connection: yes, unless it came while committing (the commit may have happened), since a
transaction that failed before its commit was rolled back by the server.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from psycopg import sql as pgsql

from engine.storage.connections import connect_sqlite, postgres_kwargs
from engine.storage.dialect import Dialect
from engine.storage.location import StoreLocation
from engine.storage.locks import CLAIM_LOCK_KEY


class Db(Protocol):
    """One connection's worth of SQL, in psycopg's `%(name)s` style on both stores."""

    def names(self) -> dict[str, str]: ...

    def transaction(self, *, exclusive: bool = False) -> Any: ...

    def close(self) -> None: ...

    def retryable(self) -> bool: ...


class Cursor(Protocol):
    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class SqliteDb:
    def __init__(self, location: StoreLocation) -> None:
        self._conn = connect_sqlite(location)

    def names(self) -> dict[str, str]:
        return {
            "queue": "stepstone_queue",
            "queue_ready": "stepstone_queue_ready",
            "queue_owner": "stepstone_queue_owner",
            "limits": "stepstone_limits",
            "sweep": "stepstone_queue_sweep",
            "cancels": "stepstone_cancel_requests",
            "messages": "stepstone_messages",
            "schedules": "stepstone_schedules",
        }

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator[SqliteCursor]:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")  # one writer at a time: claims see a stable table
        try:
            yield SqliteCursor(cur)
        except BaseException:
            self._conn.rollback()
            raise
        else:
            cur.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def retryable(self) -> bool:
        return False  # a local file: a failure is not a stale connection


_SQLITE = Dialect(is_sqlite=True, schema="")


class SqliteCursor:
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return self._cur.execute(_SQLITE.named(query), params or {})

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class PostgresDb:
    def __init__(self, location: StoreLocation) -> None:
        self._schema = location.schema
        # Names this process's connection in pg_stat_activity, for operators and tests.
        self._kwargs = postgres_kwargs(location, f"index:{os.getpid()}")
        self._conn: psycopg.Connection[Any] | None = None
        self._committing = False

    def names(self) -> dict[str, str]:
        def q(name: str) -> str:
            return pgsql.Identifier(self._schema, name).as_string(None)

        return {
            "queue": q("stepstone_queue"),
            "queue_ready": "stepstone_queue_ready",
            "queue_owner": "stepstone_queue_owner",
            "limits": q("stepstone_limits"),
            "sweep": q("stepstone_queue_sweep"),
            "cancels": q("stepstone_cancel_requests"),
            "messages": q("stepstone_messages"),
            "schedules": q("stepstone_schedules"),
            "channel": pgsql.Identifier(f"stepstone_queue_{self._schema}").as_string(None),
        }

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(**self._kwargs)
        return self._conn

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        self._committing = False
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                if exclusive:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK_KEY,))
                yield cur
                self._committing = True  # leaving the block commits
        except psycopg.OperationalError:
            conn.close()  # reconnect on the next call
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def retryable(self) -> bool:
        return not self._committing
