"""Opening connections to the log's database: read-write, read-only and LISTEN, on both
stores, with the SQLite pragmas each kind needs.

The library's own pool serves the event store; everything else that connects (the runnable
index, the views' SQLite connections, the API, a worker's listener) opens its connection here,
so connection arguments and pragmas are written once.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from engine.storage.location import StoreLocation

if TYPE_CHECKING:
    import psycopg

SQLITE_DURABLE = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL")
"""Writers whose commits must survive a power cut: the log, the runnable index."""

SQLITE_VIEWS = (
    # A view commit needs to be atomic, not durable: a commit lost to a power cut takes its
    # tracking record with it, and the batch is replayed from the log.
    "PRAGMA synchronous = NORMAL",
    # Checkpoints (copying the WAL into the file, with an fsync) every 1000 pages, the
    # default, took a third of a rebuild's writes; every 10000 pages lets the WAL grow to
    # about 40 MB instead.
    "PRAGMA wal_autocheckpoint = 10000",
)
"""The views' writers (connections of their own, so these never reach the engine's)."""

SQLITE_READ_ONLY = (
    # Belt and braces: mode=ro already refuses writes at the file level.
    "PRAGMA query_only = ON",
    # Read through a shared memory map of the file rather than into each connection's
    # private page cache: every thread sees the pages any has read.
    "PRAGMA mmap_size = 1073741824",
)


def sqlite_path(location: StoreLocation) -> str:
    if location.sqlite_path is None:
        raise ValueError(f"{location.display} is not a SQLite store")
    return str(location.sqlite_path)


def connect_sqlite(location: StoreLocation, *, timeout_s: float = 30) -> sqlite3.Connection:
    """A durable read-write connection in autocommit mode (transactions are explicit)."""
    conn = sqlite3.connect(sqlite_path(location), timeout=timeout_s, isolation_level=None,
                           check_same_thread=False)
    for pragma in SQLITE_DURABLE:
        conn.execute(pragma)
    return conn


def connect_sqlite_read_only(location: StoreLocation, *, timeout_s: float) -> sqlite3.Connection:
    """A connection that cannot write: the file is opened `mode=ro`, and queries only."""
    assert location.sqlite_path is not None
    uri = f"file:{quote(str(location.sqlite_path.absolute()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
    for pragma in SQLITE_READ_ONLY:
        conn.execute(pragma)
    return conn


def postgres_kwargs(location: StoreLocation, purpose: str, *, read_only: bool = False,
                    statement_timeout_s: float | None = None) -> dict[str, Any]:
    """Connection arguments; read-only sessions cannot write whatever their code does."""
    kwargs = location.connect_kwargs(purpose)
    options = []
    if read_only:
        options.append("-c default_transaction_read_only=on")
    if statement_timeout_s is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_s * 1000)}")
    if options:
        kwargs["options"] = " ".join(options)
    return kwargs


def pg_errors(name: str = "Error") -> tuple[type[Exception], ...]:
    """psycopg's error class `name`, for an `except`, if psycopg is loaded; else nothing.

    psycopg is imported only by code that talks to PostgreSQL (it costs a resume on SQLite a
    fifth of its start-up), and an error of it cannot be raised before it is imported.
    """
    module = sys.modules.get("psycopg")
    return (getattr(module, name),) if module is not None else ()


def connect_postgres(location: StoreLocation, purpose: str, *,
                     autocommit: bool = False) -> psycopg.Connection[Any]:
    import psycopg  # only PostgreSQL stores pay for the driver's import

    return psycopg.connect(**postgres_kwargs(location, purpose), autocommit=autocommit)


def listen(location: StoreLocation, channel: str) -> psycopg.Connection[Any]:
    """An autocommit connection that LISTENs on `channel` (PostgreSQL only)."""
    conn = connect_postgres(location, "listen", autocommit=True)
    conn.execute(f"LISTEN {channel}")
    return conn
