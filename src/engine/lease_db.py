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
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from psycopg import sql as pgsql

from engine.store_url import StoreLocation

CLAIM_LOCK_KEY = 0x5E5E_0001  # pg_advisory_xact_lock key: claims are serialized per database


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
    def __init__(self, path: str) -> None:
        self._path = path
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")

    def names(self) -> dict[str, str]:
        return {
            "queue": "stepstone_queue",
            "queue_ready": "stepstone_queue_ready",
            "queue_owner": "stepstone_queue_owner",
            "limits": "stepstone_limits",
            "sweep": "stepstone_queue_sweep",
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


_PARAM = re.compile(r"%\((\w+)\)s")


class SqliteCursor:
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return self._cur.execute(_PARAM.sub(r":\1", query), params or {})

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class PostgresDb:
    def __init__(self, location: StoreLocation) -> None:
        env = location.env
        self._schema = env.get("POSTGRES_SCHEMA") or "public"
        self._kwargs: dict[str, Any] = {
            "dbname": env["POSTGRES_DBNAME"],
            "host": env["POSTGRES_HOST"],
            "port": env["POSTGRES_PORT"],
            "user": env["POSTGRES_USER"],
            "password": env["POSTGRES_PASSWORD"],
            "connect_timeout": int(env["POSTGRES_CONNECT_TIMEOUT"]),
            # Names this process's connection in pg_stat_activity, for operators and tests.
            "application_name": f"stepstone-index:{os.getpid()}",
        }
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
