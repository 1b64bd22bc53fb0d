"""Ambient context: which run is driving the current thread, and which step is running.

Kept in ContextVars (as DBOS does) so step code needs no extra parameter and a step called
outside any workflow simply runs as a plain function.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

if TYPE_CHECKING:
    from engine.definitions import Step
    from engine.fingerprints import Fingerprint
    from engine.stopping import CheckpointRate


class StepRunner(Protocol):
    """What a `Step` calls when a workflow run is driving this thread (the RunDriver)."""

    def call_step(self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Replay the step's recorded outcome, or run and record a new attempt."""

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the new path guarded by `change_id` (engine.patching)."""


class CheckpointSink(Protocol):
    """Where a running step's checkpoints go (the RunDriver); kept abstract for tests."""

    def checkpoint(self, ctx: StepContext, state: Any, done: int | None, total: int | None,
                   source: Fingerprint | None = None, effects: Iterable[str] = ()) -> None:
        """Record `state` durably; unwind with `Preempted` if preemption was requested."""

    @property
    def preemption_requested(self) -> bool:
        """Whether the run's preemption token is set."""

    @property
    def cancel_requested(self) -> bool:
        """Whether the run is asked to stop for good (a cancel, its deadline)."""


class StepContext:
    """What a running step knows about itself; get it with `step_context()`."""

    def __init__(
        self,
        *,
        run_id: UUID | None,
        step_key: str,
        attempt: int,
        last_checkpoint: Any,
        checkpoint_sequence: int,
        sink: CheckpointSink | None,
        checkpoint_version: int = 1,
    ) -> None:
        self.run_id = run_id
        self.step_key = step_key
        self.attempt = attempt
        self.last_checkpoint = last_checkpoint
        self.checkpoint_sequence = checkpoint_sequence
        self.checkpoint_version = checkpoint_version  # @step(checkpoint_version=...)
        self._sink = sink
        # Control (engine.stopping): when this attempt's own timeout passes (monotonic), whether
        # the step was told so, and whether the driver stopped waiting for it.
        self.timeout_s: float | None = None
        self.timeout_at: float | None = None
        self.timed_out = False
        self.abandoned = False
        self.rate: CheckpointRate | None = None  # written checkpoints, against the runaway cap

    @property
    def operation_id(self) -> str:
        """Stable across retries and workers: key external side effects on it."""
        return f"{self.run_id}/{self.step_key}" if self.run_id else f"local/{self.step_key}"

    @property
    def preemption_requested(self) -> bool:
        return self._sink.preemption_requested if self._sink else False

    @property
    def cancel_requested(self) -> bool:
        """True once the run is to stop for good (cancelled, or past its deadline): the next
        `checkpoint()` saves and unwinds. A step that can stop sooner may check this."""
        return self._sink.cancel_requested if self._sink else False

    @property
    def remaining_s(self) -> float | None:
        """Seconds left before this attempt's timeout (`@step(timeout=...)`), if it has one."""
        return None if self.timeout_at is None else self.timeout_at - time.monotonic()

    def checkpoint(self, state: Any, *, done: int | None = None, total: int | None = None,
                   source: Fingerprint | None = None, effects: Iterable[str] = ()) -> None:
        """Persist progress inside the step (an offset, a cursor, a partial result).

        `done`/`total` are optional progress figures for the read side. `source`, a
        fingerprint of what the step reads (`file_fingerprint`, `function_fingerprint`), is
        computed again before a resume trusts this checkpoint; `effects` are the keys of the
        side effects committed since the previous checkpoint, which the step's
        `verify_effects` checks on resume (docs/architecture.md). If preemption, a cancel or
        the run's deadline is pending, this persists the checkpoint and then unwinds the step;
        past the attempt's own timeout it persists it and raises `StepTimeoutError`.
        """
        if self._sink is None:
            self.last_checkpoint = state
            self.checkpoint_sequence += 1
            return
        self._sink.checkpoint(self, state, done, total, source, effects)


current_runner: ContextVar[StepRunner | None] = ContextVar("stepstone_runner", default=None)
current_step: ContextVar[StepContext | None] = ContextVar("stepstone_step", default=None)


def step_context() -> StepContext:
    """The context of the step running in this thread.

    Outside a workflow a step runs as a plain function; it then gets a detached context whose
    checkpoints are kept in memory only, so step code can be unit-tested without an engine.
    """
    ctx = current_step.get()
    if ctx is None:
        raise RuntimeError(
            "step_context() was called outside a step: call it from a function decorated "
            "with @step"
        )
    return ctx
