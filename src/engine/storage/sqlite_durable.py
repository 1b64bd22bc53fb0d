"""The SQLite persistence module the engine uses: the library's, with synchronous=FULL pinned.

The library never sets `PRAGMA synchronous`, so in WAL mode durability is whatever the SQLite
build defaults to: FULL on common builds, NORMAL on some, where a power loss can drop the last
commits. A workflow engine promises that a recorded step stays recorded, so every connection
states FULL explicitly.
"""

from __future__ import annotations

# Imported as a module: the library takes the one factory class found in this module.
from collections.abc import Sequence
from typing import Any

from eventsourcing import sqlite as library
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment, EnvType

from engine.storage.connections import SQLITE_DURABLE
from engine.storage.dialect import Dialect, Statement

_SQLITE = Dialect(is_sqlite=True, schema="")


class DurableSQLiteConnectionPool(library.SQLiteConnectionPool):
    def _create_connection(self) -> library.SQLiteConnection:
        connection = super()._create_connection()
        for pragma in SQLITE_DURABLE:
            connection._sqlite_conn.execute(pragma)
        return connection


class SQLiteRunRecorder(library.SQLiteApplicationRecorder):
    """The library's recorder, plus `also`: statements committed with the events (a start's
    row in the runnable index, which lives in the same file), so a start is one commit."""

    def _insert_events(
        self, c: library.SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        also: Sequence[Statement] = kwargs.get("also", ())
        for sql, params in also:
            if params:
                c.executemany(_SQLITE.named(sql), params)
            else:
                c.execute(_SQLITE.named(sql))
        return ids


class Factory(library.SQLiteFactory):
    """Resolved by `eventsourcing` from PERSISTENCE_MODULE = "engine.storage.sqlite_durable"."""

    application_recorder_class = SQLiteRunRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        # Replaced before any connection exists: the library's pool opens them lazily.
        self.datastore.pool = DurableSQLiteConnectionPool(
            db_name=pool.db_name, lock_timeout=pool.lock_timeout
        )
        pool.close()
