"""Runs the views call `running` but no live process holds: shown `interrupted`, never written.

The runs view folds the log, which cannot know that a run's process died. The runnable index
beside it (`stepstone_queue`, in the same database) holds each run's lease; `engine.liveness`
judges one. Here the same judgement is made for a page of runs in one query, and as a SQL
condition so `?status=interrupted` (and `running`) filter in the database, keyset pages intact.
A lease held by a process of this machine that no longer exists counts as dead: those pids are
found first (a handful of rows) and named in the condition.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from api.readonly_store import ReadOnlyStore
from engine.liveness import THIS_HOST, Lease, observe
from engine.status import RunStatus
from engine.storage.index_db import PG_HOLDER_GONE
from engine.workers.leases import process_alive

_RUNNING = RunStatus.RUNNING.value


class LeaseReads:
    def __init__(self, store: ReadOnlyStore, runs_table: str) -> None:
        self.store = store
        self.runs = runs_table
        self.queue = store.qualify("stepstone_queue")
        self._text_id = "" if store.is_sqlite else "::text"
        self._columns: set[str] | None = None

    def _has(self, column: str) -> bool:
        """Whether the index has `column` (an index made by an older release may not, until
        a process of this one opens it for writing; the API never alters a table)."""
        if not self._columns:  # asked again while the table is missing: it may appear
            if self.store.is_sqlite:
                rows = self.store.fetch("SELECT name FROM pragma_table_info('stepstone_queue')")
            else:
                rows = self.store.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE "
                    "table_name = 'stepstone_queue' AND table_schema = ?",
                    [self.store.dialect.schema])
            self._columns = {str(r[0]) for r in rows}
        return column in self._columns

    def _gone(self, prefix: str = "") -> str:
        """SQL true when a row's holder's session has ended (PostgreSQL session liveness)."""
        if self.store.is_sqlite or not self._has("owner_session"):
            return "(1 = 0)"
        return PG_HOLDER_GONE.replace("owner_session", f"{prefix}owner_session")

    def _dead_local_pids(self, now: float) -> list[int]:
        rows = self.store.fetch(
            f"SELECT DISTINCT owner_pid FROM {self.queue} WHERE owner_host = ? "
            "AND lease_expires_at > ? AND owner_pid IS NOT NULL",
            [THIS_HOST, now],
        )
        return [int(pid) for (pid,) in rows if not process_alive(int(pid))]

    def held_condition(self) -> tuple[str, list[Any]]:
        """SQL true for a runs-view row whose run a live process holds now, and its params.

        A store without a runnable index has never had a run driven by the engine: nobody
        holds anything there."""
        if not self._has("run_id"):
            return "(1 = 0)", []
        now = time.time()
        dead = self._dead_local_pids(now)
        local = ""
        params: list[Any] = [now]
        if dead:
            local = (f" AND NOT (q.owner_host = ? AND q.owner_pid IN "
                     f"({', '.join('?' * len(dead))}))")
            params += [THIS_HOST, *dead]
        return (
            f"EXISTS (SELECT 1 FROM {self.queue} q WHERE q.run_id = "
            f"{self.runs}.run_id{self._text_id} AND q.lease_owner IS NOT NULL "
            f"AND q.lease_expires_at > ?{local} AND NOT {self._gone('q.')})",
            params,
        )

    def status_filter(self, status: str) -> tuple[str, list[Any]]:
        """The WHERE clause for `?status=`: `running` and `interrupted` split the view's
        `running` rows by their lease; any other status is the view's own."""
        if status == RunStatus.INTERRUPTED.value:
            held, params = self.held_condition()
            return f"status = ? AND NOT {held}", [_RUNNING, *params]
        if status == _RUNNING:
            held, params = self.held_condition()
            return f"status = ? AND {held}", [_RUNNING, *params]
        return "status = ?", [status]

    def apply(self, runs: Sequence[dict[str, Any]]) -> None:
        """Set each running run's status as observed now, who holds it, when last seen."""
        running = [r for r in runs if r["status"] == _RUNNING]
        if not running:
            return
        ids = [str(r["run_id"]) for r in running]
        if not self._has("run_id"):  # no runnable index: nobody holds any run
            self._observe(running, {})
            return
        heartbeat = "heartbeat_at" if self._has("heartbeat_at") else "NULL"
        rows = self.store.fetch(
            f"SELECT run_id, lease_owner, lease_expires_at, owner_host, owner_pid, {heartbeat}, "
            f"{self._gone()} FROM {self.queue} WHERE run_id IN ({', '.join('?' * len(ids))})",
            ids,
        )
        self._observe(running, {str(r[0]): Lease(r[1], r[2], r[3], r[4], r[5], bool(r[6]))
                                for r in rows})

    def _observe(self, running: Sequence[dict[str, Any]], leases: dict[str, Lease]) -> None:
        now = time.time()
        for run in running:
            seen = observe(RunStatus.RUNNING, _when(run.get("updated_at")),
                           leases.get(str(run["run_id"])), now)
            run["status"] = seen.status.value
            run["held_by"] = seen.held_by
            run["last_seen_at"] = seen.last_seen.isoformat() if seen.last_seen else None

    def interrupted_counts(self) -> dict[str, int]:
        """Interrupted runs per workflow (for /metrics)."""
        held, params = self.held_condition()
        rows = self.store.fetch(
            f"SELECT workflow, count(*) FROM {self.runs} WHERE status = ? AND NOT {held} "
            "GROUP BY workflow",
            [_RUNNING, *params],
        )
        return {str(wf): int(n) for wf, n in rows}


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(0, UTC)
