"""The SQLite persistence module the engine uses: the library's, with synchronous=FULL pinned.

The library never sets `PRAGMA synchronous`, so in WAL mode durability is whatever the SQLite
build defaults to: FULL on common builds, NORMAL on some, where a power loss can drop the last
commits. A workflow engine promises that a recorded step stays recorded, so every connection
states FULL explicitly.
"""

from __future__ import annotations

# Imported as a module: the library takes the one factory class found in this module.
from eventsourcing import sqlite as library
from eventsourcing.utils import Environment, EnvType

from engine.storage.connections import SQLITE_DURABLE


class DurableSQLiteConnectionPool(library.SQLiteConnectionPool):
    def _create_connection(self) -> library.SQLiteConnection:
        connection = super()._create_connection()
        for pragma in SQLITE_DURABLE:
            connection._sqlite_conn.execute(pragma)
        return connection


class Factory(library.SQLiteFactory):
    """Resolved by `eventsourcing` from PERSISTENCE_MODULE = "engine.storage.sqlite_durable"."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        # Replaced before any connection exists: the library's pool opens them lazily.
        self.datastore.pool = DurableSQLiteConnectionPool(
            db_name=pool.db_name, lock_timeout=pool.lock_timeout
        )
        pool.close()
