"""The two databases the runnable index lives in, behind one small interface.

SQLite: one connection per process, `BEGIN IMMEDIATE` for claims. PostgreSQL: one connection,
reopened after it breaks, and an advisory lock for claims.

Liveness on PostgreSQL: each process's index connection holds a session advisory lock on a
random key of its own, and the rows it leases record that key (`owner_session`). The lock goes
when the session does, i.e. when the process dies (the server notices a killed client's
socket at once), so a claimer can take such a lease without waiting for it to expire. A paused
or partitioned process keeps its session until the server drops it, so there the lease's
expiry still bounds the wait, and the log's fencing covers any overlap.

A PostgreSQL connection left idle across a server restart looks healthy until it is used, and
then fails. `retryable()` tells the caller whether that failure may be repeated on a fresh
connection: yes, unless it came while committing (the commit may have happened), since a
transaction that failed before its commit was rolled back by the server.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from engine.storage.connections import connect_sqlite, postgres_kwargs
from engine.storage.dialect import Dialect
from engine.storage.location import StoreLocation
from engine.storage.locks import CLAIM_LOCK_KEY

if TYPE_CHECKING:
    import psycopg


PG_HOLDER_GONE = (
    "(owner_session IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE "
    "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) AND "
    "l.classid = (owner_session >> 32)::oid AND "
    "l.objid = (owner_session & 4294967295)::oid))"
)
"""SQL true for a queue row whose lease holder's process is gone (PostgreSQL): nobody holds
its session's advisory lock. A bigint advisory key shows in pg_locks as classid = its high and
objid = its low 32 bits; the key is split, not the locks rebuilt, which other keys would
overflow. Readers use it too (`engine.liveness`, the API), as it writes nothing."""


class Db(Protocol):
    """One connection's worth of SQL, in psycopg's `%(name)s` style on both stores."""

    session: int
    """This process's liveness key (0: none, on SQLite)."""

    def names(self) -> dict[str, str]: ...

    def transaction(self, *, exclusive: bool = False) -> Any: ...

    def close(self) -> None: ...

    def retryable(self) -> bool: ...


class Cursor(Protocol):
    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any: ...

    def executemany(self, query: str, params: Sequence[Mapping[str, Any]]) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class SqliteDb:
    def __init__(self, location: StoreLocation) -> None:
        self._conn = connect_sqlite(location)
        self.session = 0  # one machine: owner_host and owner_pid tell a dead holder

    def names(self) -> dict[str, str]:
        return {
            "queue": "stepstone_queue",
            "queue_ready": "stepstone_queue_ready",
            "queue_owner": "stepstone_queue_owner",
            "limits": "stepstone_limits",
            "sweep": "stepstone_queue_sweep",
            "cancels": "stepstone_cancel_requests",
            "set_session": "",
            "session_col": "",
            "session_val": "",
            "holder_gone": "0",
            "session_ddl": "SELECT 1",
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

    def executemany(self, query: str, params: Sequence[Mapping[str, Any]]) -> Any:
        return self._cur.executemany(_SQLITE.named(query), params)

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
        self.session = 0

    def names(self) -> dict[str, str]:
        from psycopg import sql as pgsql  # only PostgreSQL stores pay for the driver's import

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
            "set_session": ", owner_session = %(session)s",
            "session_col": ", owner_session",
            "session_val": ", %(session)s",
            # True when the lease's holder process is gone: nobody holds its session lock.
            # (A bigint advisory key shows in pg_locks as classid = high, objid = low 32 bits;
            # the key is split, not the locks rebuilt, which other keys would overflow.)
            "holder_gone": PG_HOLDER_GONE,
            # Guarded: ALTER TABLE locks the table even when the column is there already,
            # and every process that opens the index runs this.
            "session_ddl": (
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE "
                f"table_schema = {pgsql.Literal(self._schema).as_string(None)} AND "
                "table_name = 'stepstone_queue' AND "
                "column_name = 'owner_session') THEN "
                f"ALTER TABLE {q('stepstone_queue')} ADD COLUMN owner_session BIGINT; "
                "END IF; END $$"
            ),
        }

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = psycopg.connect(**self._kwargs)
            # A fresh key for every session: the old session may linger a while server-side.
            # Positive and under 2**62, so pg_locks' two unsigned halves add up to it.
            session = random.getrandbits(62) or 1
            conn.execute("SELECT pg_advisory_lock(%s)", (session,))
            conn.commit()
            self._conn, self.session = conn, session
        return self._conn

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        import psycopg

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
