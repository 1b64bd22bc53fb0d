"""Cancelling a run from anywhere: the engine side of `stepstone cancel`.

See docs/controlling-runs.md. A cancel is first made durable as a request beside the log
(`engine.workers.cancels`); then, if no live process holds the run, the canceller takes its
lease for the instant it needs and records `RunCancelled` itself. Otherwise the holder (a
worker, a `stepstone run`, on any machine) sees the request within `cancel_poll_s` and records
it at its next checkpoint or step boundary, with its progress saved. Either way the log has one
writer at a time.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

from engine.children import wake_parent_or_self
from engine.errors import CancelPendingError, RunConflictError, RunFinishedError
from engine.liveness import THIS_HOST
from engine.logcontext import get_logger
from engine.status import RunStatus
from engine.stopping import CancelRequest
from engine.workers.cancels import cancel_request, clear_cancel, request_cancel
from engine.workers.leases import DONE, READY

if TYPE_CHECKING:
    from engine.engine import Engine

log = get_logger("stepstone.engine")


@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel did: recorded at once, or asked of the live holder named."""

    run_id: UUID
    status: RunStatus
    """The run's status after the call: `cancelled`, or what it still is while its holder
    has yet to reach a checkpoint (or, rarely, what it ended as first)."""
    holder: str | None
    """The process that will record the cancel, when it was not recorded here."""
    request: CancelRequest


def default_requester() -> str:
    """Who is asking: the OS user at this host (recorded in `RunCancelled.by`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "unknown"
    return f"{user}@{THIS_HOST}"


def cancel(engine: Engine, run_id: UUID, *, reason: str, by: str | None = None,
           wait_s: float = 0.0) -> CancelOutcome:
    """Cancel `run_id` (see the module's docstring); wait up to `wait_s` for a live holder
    to record it. `RunFinishedError` for a finished run, `CancelPendingError` if a cancel is
    already on its way: nothing is written in either case."""
    run = engine.store.load(run_id)  # RunNotFoundError for an unknown id
    if run.status.is_terminal:
        raise RunFinishedError(run_id, run.status.value, "cancel")
    leases = engine.leases
    pending = cancel_request(leases, run_id)
    # Durable before anything else, so a holder (or whoever takes the run next) honours it.
    request = pending or request_cancel(
        leases, run_id, CancelRequest(by or default_requester(), reason, datetime.now(UTC))
    )
    keeper = engine.driving()
    if keeper is not None and run_id in keeper.held():
        # This very engine drives it (another thread of the embedding application): its
        # driver learns of the cancel at once, without waiting for the poll.
        keeper.note_cancel(run_id, request)
        holder: str | None = engine.settings.worker_id
    else:
        holder = leases.claim_run(run_id, _canceller(engine), engine.settings.lease_duration_s,
                                  workflow=run.state.workflow, queue=run.state.queue)
    if holder is None:  # nobody live holds it (pending, waiting, its holder died): record it
        return _cancel_held(engine, run_id, request)
    if pending is not None:
        raise CancelPendingError(run_id, pending.by, pending.requested_at.isoformat())
    log.info("run %s: cancel requested; %s stops it at its next checkpoint", run_id, holder)
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        info = engine.status(run_id)
        if info.status.is_terminal:
            return CancelOutcome(run_id, info.status, None, request)
        time.sleep(0.1)
    return CancelOutcome(run_id, engine.status(run_id).status, holder, request)


def _canceller(engine: Engine) -> str:
    """The lease owner a cancel claims as: never this process's drivers' own name, so a run
    another engine of this process drives counts as held, not as ours to take."""
    return f"{engine.settings.worker_id}/cancel"


def _cancel_held(engine: Engine, run_id: UUID, request: CancelRequest) -> CancelOutcome:
    """Record the cancel under the lease this process just took; hand the run back ended."""
    owner = _canceller(engine)
    leases = engine.leases
    try:
        for _ in range(3):
            run = engine.store.load(run_id)  # as of now, under the lease
            if run.status.is_terminal:
                break
            run.cancel(request.by, request.reason, at=datetime.now(UTC), worker=owner,
                       requested_at=request.requested_at)
            try:
                engine.store.save_run(run)
                break
            except RunConflictError:  # a dead holder's last write landed meanwhile: reload
                continue
    except BaseException:
        leases.release(run_id, owner, state=READY)
        raise
    leases.release(run_id, owner, state=DONE)
    clear_cancel(leases, run_id)
    wake_parent_or_self(engine, run)  # a child cancelled here: its parent learns of it
    status = run.status
    if status is RunStatus.CANCELLED:
        log.info("run %s cancelled by %s: %s", run_id, request.by, request.reason)
    return CancelOutcome(run_id, status, None, request)
