"""The WorkflowRun aggregate: a run's state, rebuilt by replaying its events.

Pure by design: no clock, no randomness, no I/O. Time, ids and worker names arrive on the
events; the executor decides, this class only records and remembers. Its whole state is one
pydantic model, which is also what a snapshot stores.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import BaseAggregate, CanSnapshotAggregate
from eventsourcing.utils import get_topic, resolve_topic
from pydantic import BaseModel, ConfigDict

from engine import events as ev
from engine.chain import SEAL


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
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PREEMPTED = "preempted"
    WAITING = "waiting"


class ErrorInfo(BaseModel):
    error_type: str
    message: str
    step_key: str | None = None


class StepState(BaseModel):
    key: str
    name: str
    attempt: int
    failures: int = 0
    status: StepStatus
    started_at: datetime
    output: Any = None
    checkpoint_sequence: int = 0
    checkpoint: Any = None
    error: ErrorInfo | None = None
    retryable: bool = False
    next_attempt_at: datetime | None = None
    wake_at: datetime | None = None


class Divergence(BaseModel):
    """Where a parked run's history and the code parted: the step recorded, the step asked."""

    expected: str
    actual: str
    position: int


class RunState(BaseModel):
    """Everything the engine decides from; steps keep the order they were first started in."""

    workflow: str = ""
    workflow_version: int = 0
    entrypoint: str = ""
    code_fingerprint: str = ""
    input: dict[str, Any] = {}
    input_digest: str = ""
    idempotency_key: str | None = None
    queue: str = "default"
    status: RunStatus = RunStatus.PENDING
    steps: dict[str, StepState] = {}
    output: Any = None
    error: ErrorInfo | None = None
    worker_id: str = ""
    last_reason: str | None = None
    # -- audit and replay, docs/audit.md --
    last_hash: str | None = None  # the chain continues from here, also after a snapshot
    patches: list[str] = []  # change ids of patch markers recorded, in order
    parent_run_id: UUID | None = None  # a fork's parent run
    forked_from_step: str | None = None
    parked: Divergence | None = None


class WorkflowRun(BaseAggregate[UUID]):
    """One run of a workflow. Created by `RunStarted`; every later event goes through `when`."""

    def __init__(self) -> None:
        self.state = RunState()
        self.snapshot_version = 0  # bookkeeping for the store, not part of the run's state

    @classmethod
    def start(cls, run_id: UUID, **fields: Any) -> WorkflowRun:
        fields.setdefault("parent_run_id", None)
        fields.setdefault("forked_from_step", None)
        # Tamper evidence: the first event opens the run's hash chain (engine.chain).
        fields["prev_hash"] = None
        fields["hash"] = SEAL
        return cls._create(ev.RunStarted, id=run_id, **fields)

    def record(self, event_class: type[ev.RunEvent], **fields: Any) -> None:
        """Append a new event to this run (pending until the store saves it)."""
        # Tamper evidence: chain the event to the run's last one (engine.chain).
        fields["prev_hash"] = self.state.last_hash
        fields["hash"] = SEAL
        self.trigger_event(event_class, **fields)

    @property
    def steps(self) -> dict[str, StepState]:
        return self.state.steps

    @property
    def status(self) -> RunStatus:
        return self.state.status

    def when(self, event: ev.RunEvent) -> None:
        s = self.state
        s.worker_id = event.worker_id
        s.last_hash = event.hash
        match event:
            case ev.RunStarted():
                s.workflow = event.workflow
                s.workflow_version = event.workflow_version
                s.entrypoint = event.entrypoint
                s.code_fingerprint = event.code_fingerprint
                s.input = event.input
                s.input_digest = event.input_digest
                s.idempotency_key = event.idempotency_key
                s.parent_run_id = event.parent_run_id
                s.forked_from_step = event.forked_from_step
                s.queue = event.queue
            case ev.RunResumed():
                s.status = RunStatus.RUNNING
                s.last_reason = event.reason.value
                s.parked = None
            case ev.StepStarted():
                s.status = RunStatus.RUNNING
                prior = s.steps.get(event.step_key)
                s.steps[event.step_key] = StepState(
                    key=event.step_key,
                    name=event.step_name,
                    attempt=event.attempt,
                    status=StepStatus.RUNNING,
                    started_at=event.timestamp,
                    failures=prior.failures if prior else 0,
                    checkpoint_sequence=prior.checkpoint_sequence if prior else 0,
                    checkpoint=prior.checkpoint if prior else None,
                )
            case ev.StepCheckpointed():
                step = s.steps[event.step_key]
                step.checkpoint_sequence = event.sequence
                step.checkpoint = event.state
            case ev.StepCompleted():
                step = s.steps[event.step_key]
                step.status = StepStatus.COMPLETED
                step.output = event.output
            case ev.StepFailed():
                step = s.steps[event.step_key]
                step.status = StepStatus.FAILED
                step.failures += 1
                step.error = ErrorInfo(
                    error_type=event.error_type, message=event.message, step_key=event.step_key
                )
                step.retryable = event.retryable
                step.next_attempt_at = event.next_attempt_at
            case ev.StepPreempted():
                s.steps[event.step_key].status = StepStatus.PREEMPTED
            case ev.TimerStarted():
                s.status = RunStatus.WAITING
                s.steps[event.step_key] = StepState(
                    key=event.step_key,
                    name="sleep",
                    attempt=0,  # a timer is not an attempt at anything
                    status=StepStatus.WAITING,
                    started_at=event.timestamp,
                    wake_at=event.wake_at,
                )
            case ev.TimerFired():
                s.status = RunStatus.RUNNING
                s.steps[event.step_key].status = StepStatus.COMPLETED
            case ev.RunPreempted():
                s.status = RunStatus.PREEMPTED
                s.last_reason = event.reason
            case ev.RunCompleted():
                s.status = RunStatus.COMPLETED
                s.output = event.output
            case ev.RunFailed():
                s.status = RunStatus.FAILED
                s.error = ErrorInfo(
                    error_type=event.error_type, message=event.message, step_key=event.step_key
                )
            case ev.RunCancelled():
                s.status = RunStatus.CANCELLED
                s.last_reason = f"{event.by}: {event.reason}"
            # -- audit and replay, docs/audit.md --
            case ev.PatchMarked():
                s.patches.append(event.change_id)
            case ev.StepReused():
                s.steps[event.step_key] = StepState(
                    key=event.step_key,
                    name=event.step_name,
                    attempt=0,
                    status=StepStatus.COMPLETED,
                    started_at=event.timestamp,
                    output=event.output,
                )
            case ev.RunParked():
                s.status = RunStatus.PARKED
                s.last_reason = event.reason
                s.parked = Divergence(
                    expected=event.expected, actual=event.actual, position=event.position
                )

    @property
    def completed_steps(self) -> int:
        return sum(1 for step in self.state.steps.values() if step.status is StepStatus.COMPLETED)


class RunSnapshot(BaseModel, CanSnapshotAggregate[UUID]):
    """A run's whole state at one version, so loading costs only the events after it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    class_version: ClassVar[int] = 1

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    topic: str
    created_on: datetime
    state: RunState

    @classmethod
    def take(cls, aggregate: WorkflowRun) -> RunSnapshot:  # type: ignore[override]
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=aggregate.modified_on,
            topic=get_topic(type(aggregate)),
            created_on=aggregate.created_on,
            state=aggregate.state,  # encoded at once by the store; no copy needed
        )

    def mutate(self, _: None) -> WorkflowRun:
        cls: type[WorkflowRun] = resolve_topic(self.topic)
        run = cls.__new__(cls)
        run.__base_init__(self.originator_id, self.originator_version, self.created_on)
        run.modified_on = self.timestamp
        # No copy: the repository decodes a new snapshot object for every load and drops it
        # after this call, so nothing else holds this state. (A deep copy of a long run's
        # state was most of the time to load it: 100,000 events, seconds.)
        run.state = self.state
        run.snapshot_version = self.originator_version
        return run

