"""A run's state as the aggregate folds it: one pydantic model (with its steps, errors and
checkpoint bookkeeping), which is also what a snapshot stores.

Kept apart from `engine.aggregate` (the commands and the fold) so each stays small; the
aggregate module re-exports these names. None of them is a stored topic: a snapshot stores
the state as a field of `engine.aggregate:RunSnapshot`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from engine.status import RunStatus, StepStatus


class ErrorInfo(BaseModel):
    error_type: str
    message: str
    step_key: str | None = None


class CheckpointMeta(BaseModel):
    """What a resume validates of a step's checkpoint besides its state (engine.checkpoints).

    Kept only for steps with a checkpoint that was not plain, so a plain one folds as before.
    `discarded` are the sequence ranges a restart or a fallback took out of the step's line of
    checkpoints: the effects a resume verifies are those of the checkpoints still in it.
    """

    sequence: int = 0  # the checkpoint the step's state is (a fallback goes back to one)
    version: int = 1
    source: dict[str, Any] | None = None
    effects: bool = False  # some checkpoint still in the line recorded effects
    discarded: list[tuple[int, int]] = []


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
    # -- control, docs/controlling-runs.md --
    deadline: datetime | None = None
    # What resumes validate of each step's checkpoint, for steps whose checkpoints are not
    # plain (engine.checkpoints); beside the steps so a plain run's state reads as before.
    checkpoint_meta: dict[str, CheckpointMeta] = {}
    # -- messages, docs/messages.md --
    awaiting: str | None = None  # the topic a waiting `receive()` waits on
    received: list[str] = []  # ids of the messages consumed, each exactly once
    published: dict[str, Any] = {}  # the latest value of each key `publish()` recorded
    children: dict[str, UUID] = {}  # child run of each `child()` call, by its step key
