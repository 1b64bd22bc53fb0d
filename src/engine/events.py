"""The events of a workflow run: the append-only record every other part reads.

They are pydantic models (validated when decoded from the log) and `eventsourcing` aggregate
events at once, so the library's repository, snapshots and notification log work on them
unchanged. A changed event gets a higher `class_version` and an `upcast_vN_vN1` static method,
which the mapper in `codec.py` applies to older stored payloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self
from uuid import UUID

import orjson
from eventsourcing.domain import CanInitAggregate, CanMutateAggregate
from pydantic import BaseModel, ConfigDict, Field

from engine.audit.chain import SEAL, seal

if TYPE_CHECKING:
    from engine.aggregate import WorkflowRun


class ResumeReason(StrEnum):
    """Why a run was picked up again."""

    CRASH_RECOVERY = "crash_recovery"
    AFTER_PREEMPTION = "after_preemption"
    RETRY_DUE = "retry_due"
    AFTER_PARKING = "after_parking"  # audit: compatible code is back for a parked run
    TIMER_DUE = "timer_due"
    LEASE_EXPIRED = "lease_expired"
    STORE_FAULT = "store_fault"  # a save failed; the run was reloaded from its log
    FORCED = "forced"  # `resume --force` reopened a cancelled or timed-out run
    MESSAGE_WAIT = "message_wait"  # a run waiting in `receive()`: a message, its timeout, a look
    CHILD_WAIT = "child_wait"  # a run waiting for a child run: it ended, or a periodic look


def short(value: Any, limit: int = 60) -> str:
    """`value` as compact JSON, cut to `limit` characters with an ellipsis."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


STORED_PAYLOAD = "_stored_payload"
"""Where a freshly sealed event keeps its stored payload (`engine.audit.chain.seal`)."""


class RunEvent(BaseModel, CanMutateAggregate[UUID]):
    """Fields every run event carries; `originator_id` is the run id."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    class_version: ClassVar[int] = 1

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    worker_id: str
    # Tamper evidence (engine.chain): the hash of the run's previous event, and this event's
    # own hash over its stored content. None on events written before hash chaining existed.
    prev_hash: str | None = None
    hash: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        # Tamper evidence: an event triggered with `hash=SEAL` (WorkflowRun.record) gets its
        # own digest, computed once the event is whole. Decoded events keep their stored hash.
        if self.hash == SEAL:
            payload = seal(self)
            self.__dict__["hash"] = payload["hash"]
            # Kept for the mapper, which stores exactly these bytes' source (one dump per
            # event). Not a field: dumps, equality and hashing of the model ignore it.
            self.__dict__[STORED_PAYLOAD] = payload

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # A copy may differ from this event: it must not inherit the payload sealed for it.
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop(STORED_PAYLOAD, None)
        return copy

    def apply(self, aggregate: WorkflowRun) -> None:
        aggregate.when(self)

    def summary(self) -> str:
        """What a reader of the log or the timeline needs of this event, in one line (the
        step key and attempt are shown beside it, not in it)."""
        return ""


class RunStarted(RunEvent, CanInitAggregate[UUID]):
    # v2 (audit): a fork names the run it reuses outputs from and the step it re-executes from.
    class_version: ClassVar[int] = 2

    originator_topic: str
    workflow: str
    workflow_version: int
    entrypoint: str
    code_fingerprint: str
    input: dict[str, Any]
    input_digest: str
    idempotency_key: str | None
    parent_run_id: UUID | None
    forked_from_step: str | None

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """Runs started before forks existed are not forks."""
        state["parent_run_id"] = None
        state["forked_from_step"] = None
    queue: str = "default"
    # Control (docs/controlling-runs.md): past this instant the run is stopped, as by a cancel.
    deadline: datetime | None = None

    def summary(self) -> str:
        text = (f"{self.workflow} v{self.workflow_version} code {self.code_fingerprint} "
                f"input {short(self.input)}")
        if self.idempotency_key:
            text += f" key {self.idempotency_key!r}"
        if self.parent_run_id:
            text += f" forked from {self.parent_run_id} at {self.forked_from_step}"
        return text


class RunResumed(RunEvent):
    reason: ResumeReason

    def summary(self) -> str:
        return f"reason {self.reason.value}"


class StepStarted(RunEvent):
    step_key: str
    step_name: str
    attempt: int


class StepCheckpointed(RunEvent):
    step_key: str
    attempt: int
    sequence: int
    state: Any
    progress_done: int | None = None
    progress_total: int | None = None
    # What a resume validates (engine.checkpoints): the step's `checkpoint_version`, the
    # fingerprint of what it was reading (an `engine.fingerprints.Fingerprint`), and the keys
    # of the side effects committed since its previous checkpoint. Defaults, not a class
    # version: stored payloads without them decode as they always meant (version 1, nothing to
    # check), and `exclude_if` leaves them out of a plain checkpoint, stored as before, byte
    # for byte (and hashed alike: the hash covers the stored payload). A tuple, not a list,
    # so that pydantic has no mutable default to copy for every checkpoint.
    version: int = Field(default=1, exclude_if=lambda v: v == 1)
    source: dict[str, Any] | None = Field(default=None, exclude_if=lambda v: v is None)
    effects: tuple[str, ...] = Field(default=(), exclude_if=lambda v: not v)

    def summary(self) -> str:
        progress = (f" progress {self.progress_done}/{self.progress_total}"
                    if self.progress_total is not None else "")
        checks = f" v{self.version}" if self.version != 1 else ""
        if self.source is not None:
            checks += f" source {self.source.get('kind')} {self.source.get('value')}"
        if self.effects:
            checks += f" effects {len(self.effects)}"
        return f"checkpoint #{self.sequence}{checks}{progress} state {short(self.state, 50)}"


class CheckpointOutcome(StrEnum):
    """What a resume made of a step's last checkpoint (engine.checkpoints)."""

    VALID = "valid"  # every check passed: the checkpoint is handed over as recorded
    TRUSTED = "trusted"  # its source changed and the step's policy is to trust it anyway
    UPGRADED = "upgraded"  # written by an older version: the step's upgrade function ran
    FELL_BACK = "fell_back"  # effects were missing: an earlier checkpoint whose effects verify
    RESTARTED = "restarted"  # the step starts again from scratch, without a checkpoint
    REJECTED = "rejected"  # the step's policy is `fail`: the step fails for good with the reason

    @property
    def invalidated(self) -> bool:
        """Whether the checkpoint the step had reached was not resumed from."""
        return self in (CheckpointOutcome.FELL_BACK, CheckpointOutcome.RESTARTED,
                        CheckpointOutcome.REJECTED)


class CheckpointValidated(RunEvent):
    """A new attempt checked the step's last checkpoint before trusting it, and this came of it.

    `sequence` is the checkpoint examined; `resumed_from` the one handed to the step (0: none);
    `state` what the step got when that is not the recorded state (upgraded, fallen back).
    """

    step_key: str
    attempt: int
    sequence: int
    outcome: CheckpointOutcome
    reason: str
    checkpoint_version: int
    step_version: int
    resumed_from: int
    source: dict[str, Any] | None = None
    source_now: str | None = None
    missing: list[str] = []
    missing_count: int = 0
    state: Any = None

    def summary(self) -> str:
        text = f"checkpoint #{self.sequence} {self.outcome.value}"
        if self.outcome in (CheckpointOutcome.FELL_BACK, CheckpointOutcome.UPGRADED):
            text += f" (resumed from #{self.resumed_from})"
        if self.reason:
            text += f": {self.reason}"
        return text


class StepCompleted(RunEvent):
    step_key: str
    attempt: int
    output: Any
    duration_s: float

    def summary(self) -> str:
        return f"took {self.duration_s:.3f}s output {short(self.output)}"


class StepFailed(RunEvent):
    step_key: str
    attempt: int
    error_type: str
    message: str
    retryable: bool
    next_attempt_at: datetime | None
    duration_s: float

    def summary(self) -> str:
        retry = (f"retry at {self.next_attempt_at.isoformat()}"
                 if self.retryable and self.next_attempt_at else
                 "retried" if self.retryable else "not retried")
        return (f"{self.error_type}: {short(self.message, 60)[1:-1]} "
                f"(took {self.duration_s:.3f}s; {retry})")


class StepPreempted(RunEvent):
    step_key: str
    attempt: int
    last_checkpoint_sequence: int
    reason: str

    def summary(self) -> str:
        return f"{self.reason} (last checkpoint #{self.last_checkpoint_sequence})"


class TimerStarted(RunEvent):
    """A durable sleep began: the run may wait without a worker until `wake_at`."""

    step_key: str
    wake_at: datetime
    duration_s: float

    def summary(self) -> str:
        return f"until {self.wake_at.isoformat()}"


class TimerFired(RunEvent):
    step_key: str


class RunPreempted(RunEvent):
    reason: str

    def summary(self) -> str:
        return f"reason {self.reason}"


class RunCompleted(RunEvent):
    output: Any

    def summary(self) -> str:
        return f"output {short(self.output)}"


class RunFailed(RunEvent):
    error_type: str
    message: str
    step_key: str | None

    def summary(self) -> str:
        return f"{self.error_type}: {self.message}"


class RunCancelled(RunEvent):
    by: str
    reason: str
    # When the cancel was asked for (the event's timestamp is when the run's holder stopped).
    requested_at: datetime | None = None

    def summary(self) -> str:
        return f"by {self.by}: {self.reason}"


class RunTimedOut(RunEvent):
    """The run passed its deadline and was stopped there; `step_key` was running then."""

    deadline: datetime
    step_key: str | None = None

    def summary(self) -> str:
        where = f" during {self.step_key}" if self.step_key else ""
        return f"deadline {self.deadline.isoformat()} passed{where}"


# -- messages, docs/messages.md ------------------------------------------------------------------


class MessageAwaited(RunEvent):
    """`receive(topic)` found no message: the run waits, without a worker, until one arrives
    or `timeout_at` passes (recorded, so every worker and every restart keeps the same one)."""

    step_key: str
    topic: str
    timeout_at: datetime | None

    def summary(self) -> str:
        until = f" until {self.timeout_at.isoformat()}" if self.timeout_at else ""
        return f"waits for a message on {self.topic!r}{until}"


class MessageReceived(RunEvent):
    """`receive(topic)` consumed one message (exactly once: its id is never consumed again),
    or timed out (`message_id` None). Replay returns `payload` and never reads the inbox."""

    step_key: str
    topic: str
    message_id: str | None
    payload: Any
    sent_at: datetime | None

    def summary(self) -> str:
        if self.message_id is None:
            return f"no message on {self.topic!r} before the timeout"
        return f"message {self.message_id!r} on {self.topic!r}: {short(self.payload, 50)}"


class ValuePublished(RunEvent):
    """`publish(key, value)`: the run's latest value for `key`, readable before the run ends
    (`engine.read_published`, the API). Positional like a step, so replay records it once."""

    step_key: str
    key: str
    value: Any

    def summary(self) -> str:
        return f"{self.key} = {short(self.value, 50)}"


# -- child workflows, docs/messages.md ------------------------------------------------------------


class ChildStarted(RunEvent):
    """`child(workflow, input)` started (or found) the child run: its id comes from this run's
    id and `step_key`, so replay finds the same child. The parent waits for it, no worker held."""

    step_key: str
    child_run_id: UUID
    workflow: str

    def summary(self) -> str:
        return f"child {self.workflow} run {self.child_run_id}"


class ChildFinished(RunEvent):
    """The child run ended: its output, or (failed, cancelled, timed out) its error, which the
    parent's `child()` call raises as `ChildFailedError`."""

    step_key: str
    child_run_id: UUID
    status: str
    output: Any
    error_type: str | None
    message: str | None

    def summary(self) -> str:
        if self.status == "completed":
            return f"child {self.child_run_id} completed: {short(self.output, 50)}"
        return f"child {self.child_run_id} {self.status}: {self.error_type}: {self.message}"


# -- audit and replay, docs/audit.md -----------------------------------------------------------


class PatchMarked(RunEvent):
    """The workflow body took the new path of `patched(change_id)` at this point of the run."""

    change_id: str

    def summary(self) -> str:
        return f"took the new path of patch {self.change_id!r}"


class StepReused(RunEvent):
    """A fork took this step's recorded output from its parent run instead of running it."""

    step_key: str
    step_name: str
    output: Any
    reused_from: UUID

    def summary(self) -> str:
        return f"output of run {self.reused_from} reused: {short(self.output)}"


class RunParked(RunEvent):
    """Resuming diverged from the run's history; it waits for compatible code."""

    reason: str
    expected: str
    actual: str
    position: int

    def summary(self) -> str:
        return f"PARKED: {self.reason}"


EVENT_TYPES: tuple[type[RunEvent], ...] = (
    RunStarted,
    RunResumed,
    StepStarted,
    StepCheckpointed,
    StepCompleted,
    StepFailed,
    StepPreempted,
    RunPreempted,
    RunCompleted,
    RunFailed,
    RunCancelled,
    RunTimedOut,
    PatchMarked,
    StepReused,
    RunParked,
    TimerStarted,
    TimerFired,
    CheckpointValidated,
    MessageAwaited,
    MessageReceived,
    ValuePublished,
    ChildStarted,
    ChildFinished,
)
