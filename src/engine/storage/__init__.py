"""The storage layer: where the log lives, how to connect to it, its SQL dialect, the locks
taken in it, and the read port of the log. Leases, projections, the API and the worker use
this package; nothing else opens a connection or names the library's tables.
"""

from engine.storage.connections import (
    SQLITE_DURABLE,
    SQLITE_READ_ONLY,
    SQLITE_VIEWS,
    connect_postgres,
    connect_sqlite,
    connect_sqlite_read_only,
    listen,
    pg_errors,
    postgres_kwargs,
)
from engine.storage.dialect import TYPES, VIEW_TRACKING_TABLE, Dialect, Statement
from engine.storage.location import StoreLocation, parse_store_url
from engine.storage.locks import CLAIM_LOCK_KEY, SCHEMA_LOCK_KEY, schema_lock, view_lock_key
from engine.storage.log_reader import PAGE, Fetch, LogReader, LogRow, StoredRow

__all__ = [
    "CLAIM_LOCK_KEY",
    "PAGE",
    "SCHEMA_LOCK_KEY",
    "SQLITE_DURABLE",
    "SQLITE_READ_ONLY",
    "SQLITE_VIEWS",
    "TYPES",
    "VIEW_TRACKING_TABLE",
    "Dialect",
    "Fetch",
    "LogReader",
    "LogRow",
    "Statement",
    "StoreLocation",
    "StoredRow",
    "connect_postgres",
    "connect_sqlite",
    "connect_sqlite_read_only",
    "listen",
    "parse_store_url",
    "pg_errors",
    "postgres_kwargs",
    "schema_lock",
    "view_lock_key",
]
