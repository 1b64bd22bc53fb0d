"""The run and step statuses, and which event moves a run to which status: declared once.

The aggregate folds events with this table; the projections, the API's models, the metrics
and the dashboard's vocabulary read the same one (by event class, never by name), so a new
status or event is added here and nowhere else is a second list to keep in step.
"""

from __future__ import annotations

from enum import StrEnum

from engine import events as ev


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PREEMPTED = "preempted"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"  # stopped at its deadline, as a cancel would have stopped it
    PARKED = "parked"  # audit: diverged on resume, waits for compatible code (not terminal)
    # Observed, never recorded: the log says running but no live process holds the run (its
    # holder died or lost the store). `engine.liveness` derives it from the lease at read time.
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT}
)
"""Nothing may follow the event that ends a run in one of these (but a forced resume of a
cancelled or timed-out run, `STOPPED`, which is recorded as such)."""

STOPPED = frozenset({RunStatus.CANCELLED, RunStatus.TIMED_OUT})
"""Ended from outside the run's code (a cancel, its deadline): `resume --force` may reopen."""

OBSERVED = frozenset({RunStatus.INTERRUPTED})
"""Statuses no event records: what a reader sees when the log's status is contradicted by the
leases at that moment (`engine.liveness`)."""

LEASED = frozenset({RunStatus.RUNNING})
"""Statuses the log records that are true only while a live process holds the run's lease:
a reader judges them against it (`engine.liveness`), and shows `interrupted` when nobody does."""

RECORDED = tuple(s for s in RunStatus if s not in OBSERVED)
"""The statuses a run's log can put it in (the views count these)."""


class StepStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PREEMPTED = "preempted"
    WAITING = "waiting"


STATUS_AFTER: dict[type[ev.RunEvent], RunStatus] = {
    ev.RunStarted: RunStatus.PENDING,
    ev.RunResumed: RunStatus.RUNNING,
    ev.StepStarted: RunStatus.RUNNING,
    ev.TimerStarted: RunStatus.WAITING,
    ev.TimerFired: RunStatus.RUNNING,
    ev.MessageAwaited: RunStatus.WAITING,
    ev.MessageReceived: RunStatus.RUNNING,
    ev.ChildStarted: RunStatus.WAITING,
    ev.ChildFinished: RunStatus.RUNNING,
    ev.RunPreempted: RunStatus.PREEMPTED,
    ev.RunCompleted: RunStatus.COMPLETED,
    ev.RunFailed: RunStatus.FAILED,
    ev.RunCancelled: RunStatus.CANCELLED,
    ev.RunTimedOut: RunStatus.TIMED_OUT,
    ev.RunParked: RunStatus.PARKED,
}
"""The run's status after each event that changes it; the other events leave it as it was."""


def status_after(event_class: type[ev.RunEvent]) -> RunStatus | None:
    """The status an event of this class moves its run to, or None if it moves it nowhere."""
    return STATUS_AFTER.get(event_class)
