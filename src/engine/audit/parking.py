"""Parking: a run whose history the code no longer replays waits, with its reason, for code
that does. It is never re-routed down another path silently, and its log is not touched
beyond the one `RunParked` event that makes the status visible to every reader.
"""

from __future__ import annotations

from uuid import UUID

from engine.aggregate import Divergence
from engine.driver import Clock
from engine.errors import NonDeterminismError, RunConflictError, RunParkedError
from engine.logcontext import get_logger
from engine.status import RunStatus
from engine.store import RunStore

log = get_logger("stepstone.engine")


def park(
    store: RunStore, error: NonDeterminismError, *, worker_id: str, clock: Clock
) -> RunParkedError:
    """Record that `error.run_id` is parked; returns the error to raise.

    Loads the run afresh: the driver's copy holds pending events (a `RunResumed`...) that must
    not be written. A run already parked at the same divergence gets no second event.
    """
    run = store.load(error.run_id)
    divergence = Divergence(expected=error.expected, actual=error.actual, position=error.position)
    if not (run.status is RunStatus.PARKED and run.state.parked == divergence):
        run.park(
            f"diverged at step position {error.position}: the history recorded "
            f"{error.expected!r}, the code asks for {error.actual!r}",
            error.expected, error.actual, error.position, at=clock(), worker=worker_id,
        )
        try:
            store.save_run(run)
        except RunConflictError:
            # Another worker moved the run on meanwhile; its own resume decides about it.
            log.warning("run %s changed while being parked; not parked", run.id)
        else:
            log.warning("run %s parked: %s", run.id, error)
    return RunParkedError(error.run_id, error.position, error.expected, error.actual)


def park_crash_loop(store: RunStore, run_id: UUID, reason: str, *, worker_id: str,
                    clock: Clock) -> None:
    """Record that a run is parked because its workers keep dying on it (no divergence).

    `expected`/`actual` are empty and `position` is -1: nothing diverged; the reason says why.
    """
    run = store.load(run_id)
    if run.status.is_terminal or run.status is RunStatus.PARKED:
        return
    run.park(reason, "", "", -1, at=clock(), worker=worker_id)
    try:
        store.save_run(run)
    except RunConflictError:
        log.warning("run %s changed while being parked; not parked", run_id)
