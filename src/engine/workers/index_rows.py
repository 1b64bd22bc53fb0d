"""The runnable index's schema and rows: its tables, what a row and a claim are, and the
helpers readers share (a lease's local holder, a column an older release lacks).

Kept apart from `leases.py` (the operations on the index) so each stays small; `leases`
re-exports these names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from uuid import UUID

from engine.storage.index_db import Cursor
from engine.storage.location import StoreLocation

READY, DONE, PARKED = "ready", "done", "parked"
DEFAULT_QUEUE = "default"


DDL = (
    """CREATE TABLE IF NOT EXISTS {queue} (
        run_id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        available_at DOUBLE PRECISION NOT NULL,
        enqueued_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        claims INTEGER NOT NULL DEFAULT 0,
        takeovers INTEGER NOT NULL DEFAULT 0,
        owner_host TEXT,
        owner_pid INTEGER,
        note TEXT,
        heartbeat_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS {queue_ready} ON {queue} (queue, available_at)",
    "CREATE INDEX IF NOT EXISTS {queue_owner} ON {queue} (lease_owner)",
    """CREATE TABLE IF NOT EXISTS {limits} (
        scope TEXT PRIMARY KEY,
        max_running INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {sweep} (
        id INTEGER PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
    # Cancels asked for and not yet recorded by the run's holder (engine.workers.cancels).
    """CREATE TABLE IF NOT EXISTS {cancels} (
        run_id TEXT PRIMARY KEY,
        requested_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        requested_at DOUBLE PRECISION NOT NULL
    )""",
    # Messages sent to runs (engine.messages): a resend of one message id is a no-op.
    "CREATE TABLE IF NOT EXISTS {messages} (run_id TEXT NOT NULL, message_id TEXT NOT NULL, "
    "topic TEXT NOT NULL, payload TEXT NOT NULL, sent_at DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (run_id, message_id))",
)


@dataclass(frozen=True)
class Claim:
    """A run this worker now holds; `taken_from` names the worker whose lease had expired."""

    run_id: UUID
    workflow: str
    queue: str
    taken_from: str | None
    takeovers: int


@dataclass(frozen=True)
class Enqueue:
    """A run to add to the index (`LeaseStore.enqueue_many`); with `owner`, leased to it."""

    run_id: UUID
    workflow: str
    queue: str
    owner: str | None = None
    lease_s: float = 0.0
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class QueueRow:
    run_id: UUID
    workflow: str
    queue: str
    state: str
    available_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    claims: int
    takeovers: int
    note: str | None
    owner_host: str | None = None
    owner_pid: int | None = None
    heartbeat_at: float | None = None
    holder_gone: bool = False  # PostgreSQL: the holder's session (its process) has ended


def workflow_scope(name: str) -> str:
    return f"workflow:{name}"


def queue_scope(name: str) -> str:
    return f"queue:{name}"


def add_missing_column(cur: Cursor, location: StoreLocation, table: str, bare: str,
                       column: str, kind: str) -> None:
    """Add a column that a table made by an older release lacks (asked first: an ALTER locks
    the table even when there is nothing to do)."""
    if location.kind == "postgres":
        cur.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %(s)s "
            "AND table_name = %(t)s AND column_name = %(c)s",
            {"s": location.schema, "t": bare, "c": column},
        )
    else:
        cur.execute(f"SELECT 1 FROM pragma_table_info('{bare}') WHERE name = %(c)s",
                    {"c": column})
    if not cur.fetchall():
        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (a lease's local holder, a
    demo's half-written input)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
