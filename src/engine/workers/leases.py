"""The runnable index: which runs want a worker, who holds each, and until when.

A small table beside the log (`stepstone_queue`), plus `stepstone_limits` for concurrency
limits. It only decides *who should* drive a run; correctness never depends on it, because every
append is fenced by the log's optimistic concurrency (DESIGN section 6). A row that is missing
(a crash between the run's first event and its row) is restored by `sweep`, which reads the
log's `RunStarted` events; a row that is stale only costs a worker a wasted claim.

Clocks: lease times are wall-clock seconds of the machine that writes them. Workers on several
machines need clocks within a small fraction of the lease (NTP gives milliseconds); a worse skew
only makes takeover early or late, never unsafe, since the fence is the log.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from engine.errors import StoreUnavailableError
from engine.logcontext import get_logger
from engine.storage import SCHEMA_LOCK_KEY, StoreLocation
from engine.storage.index_db import Cursor as _Cursor
from engine.storage.index_db import Db as _Db
from engine.storage.index_db import PostgresDb, SqliteDb

log = get_logger("stepstone.worker")

READY, DONE, PARKED = "ready", "done", "parked"
DEFAULT_QUEUE = "default"
_T = TypeVar("_T")
_HOST = socket.gethostname()

_DDL = (
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


def workflow_scope(name: str) -> str:
    return f"workflow:{name}"


def queue_scope(name: str) -> str:
    return f"queue:{name}"


class LeaseStore:
    """The runnable index of one log. Thread-safe: calls are serialized on one connection."""

    def __init__(self, location: StoreLocation, *, clock: Callable[[], float] = time.time) -> None:
        self.location = location
        self.clock = clock
        try:
            self._db: _Db = (
                SqliteDb(location) if location.kind == "sqlite"
                else PostgresDb(location)
            )
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailableError(location.display, str(e).strip()) from e
        self._n = self._db.names()
        self.channel = self._n.get("channel", "")
        self._lock = threading.Lock()
        self._call(self._create)

    # -- plumbing -------------------------------------------------------------------------
    def call(self, fn: Callable[[_Cursor], _T], *, exclusive: bool = False) -> _T:
        """Run `fn(cursor)` in one transaction on the index's connection (for the modules
        that keep tables of their own beside it: `engine.workers.cancels`)."""
        return self._call(fn, exclusive=exclusive)

    def sql(self, text: str) -> str:
        """`text` with the index's table names filled in (`{queue}`, `{cancels}`...)."""
        return self._sql(text)

    def _call(self, fn: Callable[[Any], _T], *, exclusive: bool = False) -> _T:
        """Run `fn` in one transaction; once more on a fresh connection if the first one was
        dead (a database restart while it sat idle) and the failure left nothing done."""
        with self._lock:
            try:
                try:
                    with self._db.transaction(exclusive=exclusive) as cur:
                        return fn(cur)
                except psycopg.OperationalError as e:
                    if not self._db.retryable():
                        raise
                    log.info("the runnable index connection was lost (%s); reconnecting",
                             str(e).strip())
                with self._db.transaction(exclusive=exclusive) as cur:
                    return fn(cur)
            except (psycopg.Error, sqlite3.Error, OSError) as e:
                raise StoreUnavailableError(self.location.display, str(e).strip()) from e

    def _sql(self, text: str) -> str:
        return text.format(**self._n)

    def _create(self, cur: _Cursor) -> None:
        if self.location.kind == "postgres":  # processes starting together: one at a time
            cur.execute("SELECT pg_advisory_xact_lock(%(k)s)", {"k": SCHEMA_LOCK_KEY})
        for ddl in _DDL:
            cur.execute(self._sql(ddl))
        add_missing_column(cur, self.location, self._sql("{queue}"), "stepstone_queue",
                           "heartbeat_at", "DOUBLE PRECISION")

    def close(self) -> None:
        self._db.close()

    # -- writing rows ---------------------------------------------------------------------
    def enqueue(
        self, run_id: UUID, workflow: str, queue: str, *, owner: str | None = None,
        lease_s: float = 0.0, limits: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Add a run to the index; with `owner`, already leased to it (a local drive)."""
        now = self.clock()

        def do(cur: _Cursor) -> None:
            cur.execute(
                self._sql(
                    "INSERT INTO {queue} (run_id, workflow, queue, state, available_at, "
                    "enqueued_at, lease_owner, lease_expires_at, owner_host, owner_pid, "
                    "heartbeat_at) VALUES (%(id)s, %(wf)s, %(q)s, 'ready', %(now)s, %(now)s, "
                    "%(owner)s, %(exp)s, %(host)s, %(pid)s, %(hb)s) ON CONFLICT (run_id) DO NOTHING"
                ),
                {"id": str(run_id), "wf": workflow, "q": queue, "now": now, "owner": owner,
                 "exp": now + lease_s if owner else None, "host": _HOST if owner else None,
                 "pid": os.getpid() if owner else None, "hb": now if owner else None},
            )
            self._set_limits(cur, limits)
            if owner is None:
                self._notify(cur)

        self._call(do)

    def _notify(self, cur: _Cursor) -> None:
        # Idle PostgreSQL workers LISTEN: a new runnable run wakes them without a poll.
        if self.channel:
            cur.execute(f"NOTIFY {self.channel}")

    def set_limits(self, limits: Sequence[tuple[str, int | None]]) -> None:
        """Declare global concurrency limits (`workflow:NAME` / `queue:NAME`); None removes."""
        self._call(lambda cur: self._set_limits(cur, limits))

    def _set_limits(self, cur: _Cursor, limits: Sequence[tuple[str, int | None]]) -> None:
        for scope, max_running in limits:
            if max_running is None:
                cur.execute(self._sql("DELETE FROM {limits} WHERE scope = %(s)s"), {"s": scope})
            else:
                cur.execute(
                    self._sql(
                        "INSERT INTO {limits} (scope, max_running) VALUES (%(s)s, %(m)s) "
                        "ON CONFLICT (scope) DO UPDATE SET max_running = excluded.max_running"
                    ),
                    {"s": scope, "m": max_running},
                )

    def limits(self) -> dict[str, int]:
        def do(cur: _Cursor) -> dict[str, int]:
            cur.execute(self._sql("SELECT scope, max_running FROM {limits}"))
            return {scope: int(m) for scope, m in _rows(cur)}

        return self._call(do)

    # -- claiming ---------------------------------------------------------------------------
    def claim(self, owner: str, queues: Sequence[str] | None, slots: int,
              lease_s: float) -> list[Claim]:
        """Lease up to `slots` runnable runs to `owner`, honouring every concurrency limit.

        Claims are serialized (an advisory lock on PostgreSQL, the write lock on SQLite) so the
        running counts a claim reads stay true until it commits: limits hold across workers.
        """
        if slots <= 0:
            return []
        now = self.clock()

        def do(cur: _Cursor) -> list[Claim]:
            cur.execute(self._sql("SELECT scope, max_running FROM {limits}"))
            limits = {scope: int(m) for scope, m in _rows(cur)}
            running: dict[str, int] = {}
            if limits:
                cur.execute(
                    self._sql(
                        "SELECT queue, workflow, count(*) FROM {queue} WHERE state = 'ready' "
                        "AND lease_expires_at > %(now)s GROUP BY queue, workflow"
                    ),
                    {"now": now},
                )
                for queue, wf, n in _rows(cur):
                    running[queue_scope(queue)] = running.get(queue_scope(queue), 0) + int(n)
                    running[workflow_scope(wf)] = running.get(workflow_scope(wf), 0) + int(n)
            where = "" if queues is None else (
                " AND queue IN (" + ", ".join(f"%(q{i})s" for i in range(len(queues))) + ")"
            )
            params: dict[str, Any] = {"now": now, "scan": max(64, slots * 16)}
            params.update({f"q{i}": q for i, q in enumerate(queues or ())})
            cur.execute(
                self._sql(
                    "SELECT run_id, workflow, queue, lease_owner, takeovers FROM {queue} "
                    "WHERE state = 'ready' AND available_at <= %(now)s AND "
                    "(lease_expires_at IS NULL OR lease_expires_at <= %(now)s)" + where +
                    " ORDER BY available_at, enqueued_at LIMIT %(scan)s"
                ),
                params,
            )
            picked: list[Claim] = []
            for run_id, wf, queue, prior, takeovers in _rows(cur):
                scopes = (queue_scope(queue), workflow_scope(wf))
                if any(s in limits and running.get(s, 0) >= limits[s] for s in scopes):
                    continue
                for s in scopes:
                    running[s] = running.get(s, 0) + 1
                taken_over = prior is not None and prior != owner
                picked.append(Claim(UUID(run_id), wf, queue, prior if taken_over else None,
                                    int(takeovers) + (1 if taken_over else 0)))
                if len(picked) == slots:
                    break
            for c in picked:
                cur.execute(
                    self._sql(
                        "UPDATE {queue} SET lease_owner = %(o)s, lease_expires_at = %(exp)s, "
                        "claims = claims + 1, takeovers = %(t)s, owner_host = %(host)s, "
                        "owner_pid = %(pid)s, heartbeat_at = %(now)s WHERE run_id = %(id)s"
                    ),
                    {"o": owner, "exp": now + lease_s, "t": c.takeovers, "id": str(c.run_id),
                     "host": _HOST, "pid": os.getpid(), "now": now},
                )
            return picked

        return self._call(do, exclusive=True)

    def claim_run(
        self, run_id: UUID, owner: str, lease_s: float, *, workflow: str, queue: str
    ) -> str | None:
        """Lease one given run to `owner` (a local resume); the live holder's name if taken.

        A parked or finished row becomes ready again, since the caller asked for this run by
        name. A lease whose holder was a process on this machine that no longer exists (a
        `kill -9`, then the user runs the command again) is taken at once instead of making the
        user wait out the lease; across machines only expiry can tell.
        """
        now = self.clock()

        def do(cur: _Cursor) -> str | None:
            cur.execute(
                self._sql(
                    "SELECT lease_owner, lease_expires_at, owner_host, owner_pid FROM {queue} "
                    "WHERE run_id = %(id)s"
                ),
                {"id": str(run_id)},
            )
            rows = _rows(cur)
            if rows:
                holder, expires, host, pid = rows[0]
                live = holder is not None and expires is not None and expires > now
                if live and (holder != owner or pid != os.getpid()) \
                        and not (host == _HOST and pid is not None
                                 and not process_alive(int(pid))):
                    return str(holder)
            else:  # started before the index existed, or its row was lost: add it
                cur.execute(
                    self._sql(
                        "INSERT INTO {queue} (run_id, workflow, queue, state, available_at, "
                        "enqueued_at) VALUES (%(id)s, %(wf)s, %(q)s, 'ready', %(now)s, %(now)s)"
                    ),
                    {"id": str(run_id), "wf": workflow, "q": queue, "now": now},
                )
            cur.execute(
                self._sql(
                    "UPDATE {queue} SET lease_owner = %(o)s, lease_expires_at = %(exp)s, "
                    "state = 'ready', claims = claims + 1, note = NULL, owner_host = %(host)s, "
                    "owner_pid = %(pid)s, heartbeat_at = %(now)s WHERE run_id = %(id)s"
                ),
                {"o": owner, "exp": now + lease_s, "id": str(run_id), "host": _HOST,
                 "pid": os.getpid(), "now": now},
            )
            return None

        return self._call(do, exclusive=True)

    def heartbeat(self, owner: str, run_ids: Sequence[UUID], lease_s: float) -> set[UUID]:
        """Extend `owner`'s leases on `run_ids`; the ones it still holds come back."""
        if not run_ids:
            return set()
        now = self.clock()

        def do(cur: _Cursor) -> set[UUID]:
            kept: set[UUID] = set()
            for run_id in run_ids:
                cur.execute(
                    self._sql(
                        "UPDATE {queue} SET lease_expires_at = %(exp)s, heartbeat_at = %(now)s "
                        "WHERE run_id = %(id)s AND lease_owner = %(o)s AND state = 'ready'"
                    ),
                    {"exp": now + lease_s, "id": str(run_id), "o": owner, "now": now},
                )
                if cur.rowcount == 1:
                    kept.add(run_id)
            return kept

        return self._call(do)

    def release(self, run_id: UUID, owner: str, *, state: str = READY,
                available_at: float | None = None, note: str | None = None) -> bool:
        """Give a run back (finished, waiting, preempted or parked); False if not ours any more.

        A clean release resets the takeover count: the run's worker did not die on it.
        """
        def do(cur: _Cursor) -> bool:
            cur.execute(
                self._sql(
                    "UPDATE {queue} SET lease_owner = NULL, lease_expires_at = NULL, "
                    "state = %(s)s, available_at = %(at)s, note = %(note)s, takeovers = 0 "
                    "WHERE run_id = %(id)s AND lease_owner = %(o)s"
                ),
                {"s": state, "at": available_at if available_at is not None else self.clock(),
                 "note": note, "id": str(run_id), "o": owner},
            )
            released = cur.rowcount == 1  # read before NOTIFY, which has a rowcount of its own
            if released and state == READY and available_at is None:
                self._notify(cur)
            return released

        return self._call(do)

    # -- reading ----------------------------------------------------------------------------
    def row(self, run_id: UUID) -> QueueRow | None:
        def do(cur: _Cursor) -> QueueRow | None:
            cur.execute(
                self._sql(
                    "SELECT run_id, workflow, queue, state, available_at, lease_owner, "
                    "lease_expires_at, claims, takeovers, note, owner_host, owner_pid, "
                    "heartbeat_at FROM {queue} WHERE run_id = %(id)s"
                ),
                {"id": str(run_id)},
            )
            rows = _rows(cur)
            if not rows:
                return None
            r = rows[0]
            return QueueRow(UUID(r[0]), *r[1:])

        return self._call(do)

    def counts(self) -> dict[str, int]:
        """Rows per state, with `leased` counted apart from idle `ready` ones."""
        now = self.clock()

        def do(cur: _Cursor) -> dict[str, int]:
            cur.execute(
                self._sql(
                    "SELECT CASE WHEN state = 'ready' AND lease_expires_at > %(now)s "
                    "THEN 'leased' ELSE state END, count(*) FROM {queue} GROUP BY 1"
                ),
                {"now": now},
            )
            return {state: int(n) for state, n in _rows(cur)}

        return self._call(do)

    # -- repair -----------------------------------------------------------------------------
    def sweep_position(self) -> int:
        def do(cur: _Cursor) -> int:
            cur.execute(self._sql("SELECT position FROM {sweep} WHERE id = 1"))
            rows = _rows(cur)
            return int(rows[0][0]) if rows else 0

        return self._call(do)

    def restore(self, rows: Sequence[tuple[UUID, str, str]], position: int) -> int:
        """Add rows for runs the log has and the index lacks; remember how far the log was read."""
        now = self.clock()

        def do(cur: _Cursor) -> int:
            added = 0
            for run_id, workflow, queue in rows:
                cur.execute(
                    self._sql(
                        "INSERT INTO {queue} (run_id, workflow, queue, state, available_at, "
                        "enqueued_at) VALUES (%(id)s, %(wf)s, %(q)s, 'ready', %(now)s, %(now)s) "
                        "ON CONFLICT (run_id) DO NOTHING"
                    ),
                    {"id": str(run_id), "wf": workflow, "q": queue, "now": now},
                )
                added += max(cur.rowcount, 0)
            cur.execute(
                self._sql(
                    "INSERT INTO {sweep} (id, position) VALUES (1, %(p)s) ON CONFLICT (id) "
                    "DO UPDATE SET position = excluded.position"
                ),
                {"p": position},
            )
            return added

        return self._call(do)


def add_missing_column(cur: _Cursor, location: StoreLocation, table: str, bare: str,
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


def _rows(cur: _Cursor) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]
