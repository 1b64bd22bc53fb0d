"""The engine's reads: a run's status (with its liveness), result, history, and listings.

Kept apart from the writing side (`engine.engine`), which the `Engine` class combines with it.
Every read here is exact: it replays the run's log, and judges a `running` run against its
lease at this moment, never a view.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from engine.aggregate import WorkflowRun
from engine.audit.history import iter_history
from engine.definitions import Workflow
from engine.errors import (
    DamagedLogError,
    RunNotFinishedError,
    UnknownEventError,
    WorkflowFailedError,
)
from engine.identity import input_digest
from engine.liveness import Lease, holder_alive, observe
from engine.logcontext import get_logger
from engine.results import HistoryEntry, Placement, RunInfo
from engine.run_listing import find_runs
from engine.status import RunStatus
from engine.store import RunStore
from engine.workers.leases import READY

if TYPE_CHECKING:
    from engine.workers.leases import LeaseStore, QueueRow

log = get_logger("stepstone.engine")


class RunReads:
    """The reading half of `Engine` (a mixin: it reads `store` and `leases`)."""

    store: RunStore

    @property
    @abstractmethod
    def leases(self) -> LeaseStore:
        """The runnable index beside the log: `Engine.leases`, made on first use."""

    def status(self, run_id: UUID) -> RunInfo:
        """The run as its log says, with `interrupted` for a run the log calls running but
        no live process holds (engine.liveness), and when it was last seen."""
        return self._info(self.store.load(run_id))

    def _info(self, run: WorkflowRun) -> RunInfo:
        row = self.leases.row(run.id)
        lease = None if row is None else _lease(row)
        seen = observe(run.status, run.modified_on, lease, self.leases.clock())
        return RunInfo.of(run, liveness=seen)

    def placement(self, run_id: UUID) -> Placement | None:
        """The run's row in the runnable index, its lease judged live or not at this moment
        (engine.liveness); None if the run has no row (yet)."""
        row = self.leases.row(run_id)
        if row is None:
            return None
        held = holder_alive(_lease(row), self.leases.clock())
        return Placement(
            queue=row.queue,
            state="leased" if held and row.state == READY else row.state,
            held_by=row.lease_owner if held else None,
            note=row.note,
        )

    def wait(self, run_id: UUID, *, timeout_s: float | None = None,
             poll_s: float = 0.1) -> RunInfo:
        """Block until a run (driven anywhere) finishes; its final state. TimeoutError if not.

        Reads the log, not a view, so the answer is exact; polls, since the log has no
        per-run push on every store.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.status(run_id)
            if info.status.is_terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"run {run_id} is still {info.status.value} after {timeout_s}s"
                )
            time.sleep(poll_s)

    def result(self, run_id: UUID) -> Any:
        """The recorded output of a completed run; raises if it failed or has not finished."""
        run = self.store.load(run_id)
        if run.status is RunStatus.COMPLETED:
            return run.state.output
        if run.status is RunStatus.FAILED and run.state.error:
            raise WorkflowFailedError(run_id, run.state.error.error_type, run.state.error.message)
        raise RunNotFinishedError(f"run {run_id} is {run.status.value}; resume it to finish it")

    def history(self, run_id: UUID) -> list[HistoryEntry]:
        """The whole history as a list; `iter_history` streams it in constant memory."""
        return [HistoryEntry.of(pos, e) for pos, e in self.store.events_with_positions(run_id)]

    def iter_history(self, run_id: UUID, **options: Any) -> Iterator[HistoryEntry]:
        """The run's events one page at a time, with `after`, `limit`, `tail`, `types` and
        `follow` (see `engine.audit.history.iter_history`)."""
        return iter_history(self.store, run_id, **options)

    def runs(self, *, limit: int | None = None) -> list[RunInfo]:
        """Runs in start order (newest last); the last `limit` of them if given."""
        ids = [started.originator_id for started in self.store.started()]
        if limit is not None:
            ids = ids[-limit:]
        return [self._info(run) for run in map(self._readable, ids) if run is not None]

    def find_runs(self, *, limit: int | None = None, statuses: Collection[RunStatus] = (),
                  workflow: str | None = None, since: datetime | None = None
                  ) -> Iterator[RunInfo]:
        """Runs newest first, filtered, read backwards from the log's head a page at a time
        (`engine.run_listing`); statuses as `status` reports them, liveness included."""
        return find_runs(self.store, limit=limit, statuses=statuses, workflow=workflow,
                         since=since, info=self._info)

    def _readable(self, run_id: UUID) -> WorkflowRun | None:
        """The run, or None with a warning if its log is damaged: one bad run must not make
        every listing of the store fail."""
        try:
            return self.store.load(run_id)
        except (DamagedLogError, UnknownEventError) as e:
            log.warning("skipping run %s: %s", run_id, e)
            return None

    def unfinished_runs(
        self, workflow: Workflow[..., Any], input: Mapping[str, Any] | None = None
    ) -> list[UUID]:
        """Runs of `workflow` with this very input that have not finished, oldest first."""
        digest = input_digest(workflow.normalize_input(input))
        return [
            started.originator_id
            for started in self.store.started()
            if started.workflow == workflow.name
            and started.input_digest == digest
            and (run := self._readable(started.originator_id)) is not None
            and not run.status.is_terminal
        ]


def _lease(row: QueueRow) -> Lease:
    return Lease(row.lease_owner, row.lease_expires_at, row.owner_host, row.owner_pid,
                 row.heartbeat_at, row.holder_gone)
