"""Read models the engine hands back: frozen, plain, safe to keep."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from engine.aggregate import WorkflowRun
from engine.children import parent_of
from engine.events import RunEvent
from engine.liveness import Liveness
from engine.status import RunStatus, StepStatus


@dataclass(frozen=True)
class RunInfo:
    """A run's state as the engine's own replay sees it."""

    run_id: UUID
    workflow: str
    workflow_version: int
    status: RunStatus
    steps_completed: int
    steps_recorded: int
    current_step: str | None
    attempts: int
    output: Any
    error_type: str | None
    error_message: str | None
    idempotency_key: str | None
    started_at: datetime
    updated_at: datetime
    version: int
    parked_reason: str | None = None  # audit: why a parked run waits (RunParked's reason)
    # -- control, docs/controlling-runs.md --
    reason: str | None = None
    """Why it was cancelled, timed out, preempted or parked, as recorded."""
    deadline: datetime | None = None
    held_by: str | None = None
    """The live process driving it now (engine.liveness), if any."""
    last_seen: datetime | None = None
    """For an `interrupted` run: when it was last seen alive."""
    waiting_for: str | None = None
    """For a run waiting in `receive()`: the topic; for one waiting for a child: its run id."""
    parent_run_id: UUID | None = None
    """The run that started this one with `child()` (docs/messages.md)."""
    children: tuple[UUID, ...] = ()
    """The runs this one started with `child()`, in call order."""

    @classmethod
    def of(cls, run: WorkflowRun, liveness: Liveness | None = None) -> RunInfo:
        """`run` as replayed; with `liveness`, its status as observed at this moment."""
        s = run.state
        current = next(
            (k for k, st in reversed(s.steps.items()) if st.status is not StepStatus.COMPLETED),
            None,
        )
        return cls(
            run_id=run.id,
            workflow=s.workflow,
            workflow_version=s.workflow_version,
            status=liveness.status if liveness is not None else s.status,
            steps_completed=run.completed_steps,
            steps_recorded=len(s.steps),
            current_step=None if s.status.is_terminal else current,
            attempts=sum(st.attempt for st in s.steps.values()),
            output=s.output,
            error_type=s.error.error_type if s.error else None,
            error_message=s.error.message if s.error else None,
            idempotency_key=s.idempotency_key,
            started_at=run.created_on,
            updated_at=run.modified_on,
            version=run.version,
            parked_reason=s.last_reason if s.status is RunStatus.PARKED else None,
            reason=s.last_reason if s.status in _REASONED else None,
            deadline=s.deadline,
            held_by=liveness.held_by if liveness is not None else None,
            last_seen=liveness.last_seen if liveness is not None else None,
            waiting_for=_waiting_for(run),
            parent_run_id=parent_of(run),
            children=tuple(s.children.values()),
        )


def _waiting_for(run: WorkflowRun) -> str | None:
    s = run.state
    if s.status is not RunStatus.WAITING or not s.steps:
        return None
    last = next(reversed(s.steps.values()))
    if last.name == "child" and last.key in s.children:
        return f"child run {s.children[last.key]}"
    return s.awaiting


_REASONED = frozenset({RunStatus.CANCELLED, RunStatus.TIMED_OUT, RunStatus.PREEMPTED,
                       RunStatus.PARKED})


@dataclass(frozen=True)
class Placement:
    """Where a run stands in the runnable index beside the log: who should drive it next."""

    queue: str
    state: str
    """ready, leased (held by a live lease now), done or parked."""
    held_by: str | None
    """The worker whose lease is live now, if any."""
    note: str | None


@dataclass(frozen=True)
class RunResult:
    """How a drive of a run ended: finished (completed/failed) or stopped (preempted)."""

    run_id: UUID
    status: RunStatus
    output: Any
    error_type: str | None = None
    error_message: str | None = None
    resume_at: datetime | None = None
    """Set when a worker's drive ended because the run waits (a timer or a retry's backoff)."""

    @classmethod
    def of(cls, run: WorkflowRun, *, resume_at: datetime | None = None) -> RunResult:
        err = run.state.error
        return cls(
            run_id=run.id,
            status=run.status,
            output=run.state.output,
            error_type=err.error_type if err else None,
            error_message=err.message if err else None,
            resume_at=resume_at,
        )


# Shown as the entry's own attributes (or of no use to a reader), not among its fields.
_ENVELOPE = {"originator_id", "originator_version", "timestamp", "worker_id", "originator_topic",
             "prev_hash", "hash"}


@dataclass(frozen=True)
class HistoryEntry:
    """One event of a run, with its global position in the log."""

    position: int
    version: int
    timestamp: datetime
    event_type: str
    worker_id: str
    fields: dict[str, Any]
    hash: str | None = None  # audit: the event's link in its run's hash chain (engine.chain)
    prev_hash: str | None = None
    summary: str = field(default="", compare=False)
    """The event's one-line summary (`RunEvent.summary`), as logs and the timeline show it."""
    kind: type[RunEvent] = field(default=RunEvent, compare=False, repr=False)
    """The event's class: test it (`entry.kind is StepStarted`) rather than its name."""

    @classmethod
    def of(cls, position: int, event: RunEvent, *, summarize: bool = True) -> HistoryEntry:
        """The entry of one event; `summarize=False` skips its summary (readers that show
        only the fields, like the API, save formatting every event)."""
        return cls(
            position=position,
            version=event.originator_version,
            timestamp=event.timestamp,
            event_type=type(event).__name__,
            worker_id=event.worker_id,
            fields=event.model_dump(mode="json", exclude=_ENVELOPE),
            hash=event.hash,
            prev_hash=event.prev_hash,
            summary=event.summary() if summarize else "",
            kind=type(event),
        )
