"""The WorkflowRun aggregate: a run's state, rebuilt by replaying its events.

Pure by design: no clock, no randomness, no I/O. Time, ids and worker names arrive on the
events; the executor decides, this class only records and remembers. Its whole state is one
pydantic model, which is also what a snapshot stores.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import BaseAggregate, CanSnapshotAggregate
from eventsourcing.utils import get_topic, resolve_topic
from pydantic import BaseModel, ConfigDict

from engine import events as ev
from engine.audit.chain import SEAL
from engine.errors import EngineError
from engine.run_state import (
    CheckpointMeta,
    Divergence,
    ErrorInfo,
    RunState,
    StepState,
)
from engine.status import STATUS_AFTER, STOPPED, RunStatus, StepStatus

__all__ = [
    "CheckpointMeta", "Divergence", "ErrorInfo", "RunCommandError", "RunSnapshot", "RunState",
    "StepState", "WorkflowRun",
]


class RunCommandError(EngineError):
    """A command the run's state does not allow (a bug in the caller, never a user's error):
    nothing is recorded."""


class WorkflowRun(BaseAggregate[UUID]):
    """One run of a workflow. Created by `RunStarted`; every later event goes through `when`.

    Events are recorded only through the typed commands below, which enforce the invariants
    the log relies on: nothing follows a terminal event, and a step's attempt is checkpointed,
    completed, failed or preempted only while that attempt runs. Replay (`when`) applies any
    stored history as it is; the commands guard what is written next.
    """

    def __init__(self) -> None:
        self.state = RunState()
        self.snapshot_version = 0  # bookkeeping for the store, not part of the run's state

    @classmethod
    def start(
        cls,
        run_id: UUID,
        *,
        at: datetime,
        worker: str,
        workflow: str,
        workflow_version: int,
        entrypoint: str,
        code_fingerprint: str,
        input: dict[str, Any],
        input_digest: str,
        idempotency_key: str | None,
        queue: str = "default",
        parent_run_id: UUID | None = None,
        forked_from_step: str | None = None,
        deadline: datetime | None = None,
    ) -> WorkflowRun:
        # Tamper evidence: the first event opens the run's hash chain (engine.chain).
        return cls._create(
            ev.RunStarted, id=run_id, timestamp=at, worker_id=worker, workflow=workflow,
            workflow_version=workflow_version, entrypoint=entrypoint,
            code_fingerprint=code_fingerprint, input=input, input_digest=input_digest,
            idempotency_key=idempotency_key, queue=queue, parent_run_id=parent_run_id,
            forked_from_step=forked_from_step, deadline=deadline, prev_hash=None, hash=SEAL,
        )

    # -- commands: one per event type after RunStarted ---------------------------------------
    def resume(self, reason: ev.ResumeReason, *, at: datetime, worker: str) -> None:
        # A cancelled or timed-out run is reopened only on purpose (`resume --force`), and the
        # reason says so in its history; every other end is final.
        reopen = reason is ev.ResumeReason.FORCED
        if reopen and self.state.status not in STOPPED:
            raise RunCommandError(f"run {self.id} is {self.state.status.value}: only a "
                                  "cancelled or timed-out run can be resumed by force")
        self._trigger(ev.RunResumed, at, worker, reopen=reopen, reason=reason)

    def start_step(self, key: str, name: str, attempt: int, *, at: datetime,
                   worker: str) -> None:
        prior = self.state.steps.get(key)
        if prior is not None and prior.status is StepStatus.COMPLETED:
            raise RunCommandError(f"run {self.id}: step {key} completed already")
        self._trigger(ev.StepStarted, at, worker, step_key=key, step_name=name,
                      attempt=attempt)

    def checkpoint_step(self, key: str, attempt: int, sequence: int, state: Any,
                        done: int | None, total: int | None, *, at: datetime,
                        worker: str, version: int = 1, source: dict[str, Any] | None = None,
                        effects: list[str] | None = None) -> None:
        self._running(key, attempt)
        # Only what differs from the defaults: a plain checkpoint is built as it always was.
        checks: dict[str, Any] = ({} if version == 1 and source is None and not effects else
                  {"version": version, "source": source, "effects": effects or []})
        self._trigger(ev.StepCheckpointed, at, worker, step_key=key, attempt=attempt,
                      sequence=sequence, state=state, progress_done=done,
                      progress_total=total, **checks)

    def validate_checkpoint(self, key: str, attempt: int, outcome: ev.CheckpointOutcome, *,
                            at: datetime, worker: str, **found: Any) -> None:
        """Record what a new attempt made of the step's last checkpoint (engine.checkpoints)."""
        self._running(key, attempt)
        self._trigger(ev.CheckpointValidated, at, worker, step_key=key, attempt=attempt,
                      outcome=outcome, **found)

    def complete_step(self, key: str, attempt: int, output: Any, duration_s: float, *,
                      at: datetime, worker: str) -> None:
        self._running(key, attempt)
        self._trigger(ev.StepCompleted, at, worker, step_key=key, attempt=attempt,
                      output=output, duration_s=duration_s)

    def fail_step(self, key: str, attempt: int, error_type: str, message: str, *,
                  retryable: bool, next_attempt_at: datetime | None, duration_s: float,
                  at: datetime, worker: str) -> None:
        self._running(key, attempt)
        self._trigger(ev.StepFailed, at, worker, step_key=key, attempt=attempt,
                      error_type=error_type, message=message, retryable=retryable,
                      next_attempt_at=next_attempt_at, duration_s=duration_s)

    def preempt_step(self, key: str, attempt: int, last_sequence: int, reason: str, *,
                     at: datetime, worker: str) -> None:
        self._running(key, attempt)
        self._trigger(ev.StepPreempted, at, worker, step_key=key, attempt=attempt,
                      last_checkpoint_sequence=last_sequence, reason=reason)

    def start_timer(self, key: str, wake_at: datetime, duration_s: float, *, at: datetime,
                    worker: str) -> None:
        self._trigger(ev.TimerStarted, at, worker, step_key=key, wake_at=wake_at,
                      duration_s=duration_s)

    def fire_timer(self, key: str, *, at: datetime, worker: str) -> None:
        timer = self.state.steps.get(key)
        if timer is None or timer.status is not StepStatus.WAITING:
            raise RunCommandError(f"run {self.id}: no timer {key} is waiting")
        self._trigger(ev.TimerFired, at, worker, step_key=key)

    def await_message(self, key: str, topic: str, timeout_at: datetime | None, *,
                      at: datetime, worker: str) -> None:
        self._trigger(ev.MessageAwaited, at, worker, step_key=key, topic=topic,
                      timeout_at=timeout_at)

    def receive_message(self, key: str, topic: str, message_id: str | None, payload: Any,
                        sent_at: datetime | None, *, at: datetime, worker: str) -> None:
        prior = self.state.steps.get(key)
        if prior is not None and prior.status is StepStatus.COMPLETED:
            raise RunCommandError(f"run {self.id}: {key} received already")
        if message_id is not None and message_id in self.state.received:
            raise RunCommandError(f"run {self.id}: message {message_id!r} was consumed already")
        self._trigger(ev.MessageReceived, at, worker, step_key=key, topic=topic,
                      message_id=message_id, payload=payload, sent_at=sent_at)

    def publish(self, key: str, name: str, value: Any, *, at: datetime, worker: str) -> None:
        if key in self.state.steps:
            raise RunCommandError(f"run {self.id}: {key} was published already")
        self._trigger(ev.ValuePublished, at, worker, step_key=key, key=name, value=value)

    def start_child(self, key: str, child_run_id: UUID, workflow: str, *, at: datetime,
                    worker: str) -> None:
        if key in self.state.children:
            raise RunCommandError(f"run {self.id}: child {key} was started already")
        self._trigger(ev.ChildStarted, at, worker, step_key=key, child_run_id=child_run_id,
                      workflow=workflow)

    def finish_child(self, key: str, status: str, output: Any, error_type: str | None,
                     message: str | None, *, at: datetime, worker: str) -> None:
        child = self.state.steps.get(key)
        if key not in self.state.children or child is None \
                or child.status is not StepStatus.WAITING:
            raise RunCommandError(f"run {self.id}: no child {key} is waited for")
        self._trigger(ev.ChildFinished, at, worker, step_key=key,
                      child_run_id=self.state.children[key], status=status, output=output,
                      error_type=error_type, message=message)

    def mark_patch(self, change_id: str, *, at: datetime, worker: str) -> None:
        self._trigger(ev.PatchMarked, at, worker, change_id=change_id)

    def reuse_step(self, key: str, name: str, output: Any, reused_from: UUID, *,
                   at: datetime, worker: str) -> None:
        self._trigger(ev.StepReused, at, worker, step_key=key, step_name=name, output=output,
                      reused_from=reused_from)

    def preempt(self, reason: str, *, at: datetime, worker: str) -> None:
        self._trigger(ev.RunPreempted, at, worker, reason=reason)

    def complete(self, output: Any, *, at: datetime, worker: str) -> None:
        self._trigger(ev.RunCompleted, at, worker, output=output)

    def fail(self, error_type: str, message: str, step_key: str | None, *, at: datetime,
             worker: str) -> None:
        self._trigger(ev.RunFailed, at, worker, error_type=error_type, message=message,
                      step_key=step_key)

    def cancel(self, by: str, reason: str, *, at: datetime, worker: str,
               requested_at: datetime | None = None) -> None:
        self._trigger(ev.RunCancelled, at, worker, by=by, reason=reason,
                      requested_at=requested_at)

    def time_out(self, step_key: str | None, *, at: datetime, worker: str) -> None:
        if self.state.deadline is None:
            raise RunCommandError(f"run {self.id} has no deadline to pass")
        self._trigger(ev.RunTimedOut, at, worker, deadline=self.state.deadline,
                      step_key=step_key)

    def park(self, reason: str, expected: str, actual: str, position: int, *, at: datetime,
             worker: str) -> None:
        self._trigger(ev.RunParked, at, worker, reason=reason, expected=expected,
                      actual=actual, position=position)

    def _running(self, key: str, attempt: int) -> None:
        step = self.state.steps.get(key)
        if step is None or step.status is not StepStatus.RUNNING or step.attempt != attempt:
            raise RunCommandError(f"run {self.id}: attempt {attempt} of step {key} is not "
                                  "running")

    def _trigger(self, event_class: type[ev.RunEvent], at: datetime, worker: str,
                 reopen: bool = False, **fields: Any) -> None:
        """Append a new event (pending until the store saves it), chained to the last one."""
        if self.state.status.is_terminal and not reopen:
            raise RunCommandError(
                f"run {self.id} is {self.state.status.value}: nothing may follow its end "
                f"(asked to record {event_class.__name__})"
            )
        # Tamper evidence: chain the event to the run's last one (engine.chain).
        self.trigger_event(event_class, timestamp=at, worker_id=worker,
                           prev_hash=self.state.last_hash, hash=SEAL, **fields)

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
        status = STATUS_AFTER.get(type(event))
        if status is not None:
            s.status = status
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
                s.deadline = event.deadline
            case ev.RunResumed():
                s.last_reason = event.reason.value
                s.parked = None
                if event.reason is ev.ResumeReason.FORCED:
                    s.deadline = None  # reopened on purpose: the deadline that ended it is off
            case ev.StepStarted():
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
                if (event.version != 1 or event.source or event.effects
                        or event.step_key in s.checkpoint_meta):
                    _fold_checkpoint_meta(s, event)
            case ev.CheckpointValidated():
                _fold_validation(s, event)
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
                s.steps[event.step_key] = StepState(
                    key=event.step_key,
                    name="sleep",
                    attempt=0,  # a timer is not an attempt at anything
                    status=StepStatus.WAITING,
                    started_at=event.timestamp,
                    wake_at=event.wake_at,
                )
            case ev.TimerFired():
                s.steps[event.step_key].status = StepStatus.COMPLETED
            case ev.MessageAwaited():
                s.awaiting = event.topic
                s.steps[event.step_key] = StepState(
                    key=event.step_key, name="receive", attempt=0, status=StepStatus.WAITING,
                    started_at=event.timestamp, wake_at=event.timeout_at,
                )
            case ev.MessageReceived():
                s.awaiting = None
                prior = s.steps.get(event.step_key)
                s.steps[event.step_key] = StepState(
                    key=event.step_key, name="receive", attempt=0, status=StepStatus.COMPLETED,
                    started_at=prior.started_at if prior else event.timestamp,
                    output=event.payload,
                )
                if event.message_id is not None:
                    s.received.append(event.message_id)
            case ev.ValuePublished():
                s.published[event.key] = event.value
                s.steps[event.step_key] = StepState(
                    key=event.step_key, name="publish", attempt=0,
                    status=StepStatus.COMPLETED, started_at=event.timestamp, output=event.value,
                )
            case ev.ChildStarted():
                s.children[event.step_key] = event.child_run_id
                s.steps[event.step_key] = StepState(
                    key=event.step_key, name="child", attempt=0, status=StepStatus.WAITING,
                    started_at=event.timestamp,
                )
            case ev.ChildFinished():
                step = s.steps[event.step_key]
                if event.status == RunStatus.COMPLETED.value:
                    step.status = StepStatus.COMPLETED
                    step.output = event.output
                else:  # the parent's call raises it every time it replays
                    step.status = StepStatus.FAILED
                    step.error = ErrorInfo(error_type=event.error_type or event.status,
                                           message=event.message or "", step_key=event.step_key)
                    step.output = event.status
            case ev.RunPreempted():
                s.last_reason = event.reason
            case ev.RunCompleted():
                s.output = event.output
            case ev.RunFailed():
                s.error = ErrorInfo(
                    error_type=event.error_type, message=event.message, step_key=event.step_key
                )
            case ev.RunCancelled():
                s.last_reason = f"{event.by}: {event.reason}"
            case ev.RunTimedOut():
                s.last_reason = f"deadline {event.deadline.isoformat()} passed"
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
                s.last_reason = event.reason
                s.parked = Divergence(
                    expected=event.expected, actual=event.actual, position=event.position
                )

    @property
    def completed_steps(self) -> int:
        return sum(1 for step in self.state.steps.values() if step.status is StepStatus.COMPLETED)


def _fold_checkpoint_meta(s: RunState, event: ev.StepCheckpointed) -> None:
    meta = s.checkpoint_meta.setdefault(event.step_key, CheckpointMeta())
    meta.sequence = event.sequence
    meta.version = event.version
    meta.source = event.source
    meta.effects = meta.effects or bool(event.effects)


def _fold_validation(s: RunState, event: ev.CheckpointValidated) -> None:
    """A fallback or an upgrade hands the step another state; a restart hands it none."""
    outcome = ev.CheckpointOutcome
    step = s.steps[event.step_key]
    meta = (s.checkpoint_meta.get(event.step_key)
            or CheckpointMeta(sequence=step.checkpoint_sequence))
    if event.outcome in (outcome.UPGRADED, outcome.FELL_BACK):
        step.checkpoint = event.state
        meta.sequence = event.resumed_from
        meta.version = event.step_version
        meta.source = event.source
    if event.outcome is outcome.FELL_BACK and event.resumed_from < event.sequence:
        meta.discarded.append((event.resumed_from + 1, event.sequence))
    if event.outcome is outcome.RESTARTED:
        step.checkpoint = None
        meta = CheckpointMeta(version=event.step_version,
                              discarded=[*meta.discarded, (1, event.sequence)])
    s.checkpoint_meta[event.step_key] = meta


class RunSnapshot(BaseModel, CanSnapshotAggregate[UUID]):
    """A run's whole state at one version, so loading costs only the events after it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    class_version: ClassVar[int] = 1
    # Most of a step's fields sit at their defaults (no checkpoint, no error...): leaving them
    # out makes a long run's snapshot a third of the size, and as much faster to decode.
    store_without_defaults: ClassVar[bool] = True

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

