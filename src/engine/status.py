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
    PARKED = "parked"  # audit: diverged on resume, waits for compatible code (not terminal)

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
"""Nothing may follow the event that ends a run in one of these."""


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
    ev.RunPreempted: RunStatus.PREEMPTED,
    ev.RunCompleted: RunStatus.COMPLETED,
    ev.RunFailed: RunStatus.FAILED,
    ev.RunCancelled: RunStatus.CANCELLED,
    ev.RunParked: RunStatus.PARKED,
}
"""The run's status after each event that changes it; the other events leave it as it was."""


def status_after(event_class: type[ev.RunEvent]) -> RunStatus | None:
    """The status an event of this class moves its run to, or None if it moves it nowhere."""
    return STATUS_AFTER.get(event_class)
