"""Drives one run: re-executes the workflow body, replaying recorded steps and running new ones.

Cost model (DESIGN section 7): a step's completion is held in memory until the workflow asks
for its next step, and is committed together with that step's start, so a sequential step costs
one commit. Holding it is safe because workflow code between steps has no side effects; a crash
in that window only runs the step again, inside the at-least-once contract.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine import events as ev
from engine.aggregate import RunStatus, StepState, StepStatus, WorkflowRun
from engine.context import StepContext, current_runner, current_step
from engine.definitions import JsonCodec, Step, Workflow
from engine.errors import ConfigurationError, NonDeterminismError, OutputEncodingError
from engine.preemption import Preempted, PreemptionToken
from engine.results import RunResult
from engine.store import RunStore

log = logging.getLogger("stepstone.engine")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Checkpoint:
    """A checkpoint asked for but not yet committed (throttled)."""

    ctx: StepContext
    state: Any
    done: int | None
    total: int | None


class StepFailedError(Exception):
    """Raised in workflow code when a step failed for good; uncaught, it fails the run."""

    def __init__(self, step_key: str, error_type: str, message: str) -> None:
        self.step_key = step_key
        self.error_type = error_type
        self.error_message = message
        super().__init__(f"step {step_key} failed: {error_type}: {message}")


class RunDriver:
    def __init__(
        self,
        store: RunStore,
        run: WorkflowRun,
        definition: Workflow[..., Any],
        *,
        worker_id: str,
        token: PreemptionToken,
        checkpoint_min_interval_s: float = 0.0,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.run = run
        self.definition = definition
        self.worker_id = worker_id
        self.token = token
        self.checkpoint_min_interval_s = checkpoint_min_interval_s
        self.clock = clock
        self._history = list(run.steps)
        self._position = 0
        self._ordinals: Counter[str] = Counter()
        self._pending_checkpoint: _Checkpoint | None = None
        self._divergence: NonDeterminismError | None = None
        self._last_checkpoint_at = 0.0

    # -- recording ------------------------------------------------------------------------
    def _record(self, event_class: type[ev.RunEvent], **fields: Any) -> None:
        self.run.record(event_class, timestamp=self.clock(), worker_id=self.worker_id, **fields)

    def _save(self) -> None:
        self.store.save_run(self.run)

    # -- the run --------------------------------------------------------------------------
    def drive(self) -> RunResult:
        run = self.run
        if run.status.is_terminal:
            return RunResult.of(run)
        reason = _resume_reason(run)
        if reason is not None:
            # Pending until the first real write: a run that diverges is left untouched.
            self._record(ev.RunResumed, reason=reason)
        reset = current_runner.set(self)
        try:
            output = self.definition.fn(**self.definition.bind_input(run.state.input))
            if self._divergence is not None:
                raise self._divergence  # even if the workflow body caught it
            if self._position < len(self._history):
                raise NonDeterminismError(
                    run.id, self._position, self._history[self._position], "<end of workflow>"
                )
            encoded = self.definition.codec.encode(output)
        except Preempted as p:
            self._record(ev.RunPreempted, reason=p.reason)
            self._save()
            log.info("run %s preempted: %s", run.id, p.reason)
            return RunResult.of(run)
        except NonDeterminismError:
            raise  # before any write: the log stays exactly as it was
        except (OutputEncodingError, ConfigurationError):
            # The engine could not record something (an unencodable value, a bad annotation):
            # keep what is valid, leave the run resumable once the code is fixed.
            self._save()
            raise
        except StepFailedError as e:
            self._fail(e.error_type, e.error_message, e.step_key)
            return RunResult.of(run)
        except Exception as e:  # the workflow body itself raised
            if self._divergence is not None:
                raise self._divergence from e

            self._fail(type(e).__name__, str(e), None)
            return RunResult.of(run)
        finally:
            current_runner.reset(reset)
        self._record(ev.RunCompleted, output=encoded)
        self._save()
        return RunResult.of(run)

    def _fail(self, error_type: str, message: str, step_key: str | None) -> None:
        self._record(ev.RunFailed, error_type=error_type, message=message, step_key=step_key)
        self._save()
        log.warning("run %s failed: %s: %s", self.run.id, error_type, message)

    # -- steps ----------------------------------------------------------------------------
    def call_step(self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if current_step.get() is not None:
            raise RuntimeError(
                f"step {step.name!r} was called from inside another step; call steps from the "
                "workflow body so each is recorded on its own"
            )
        if self._divergence is not None:
            raise self._divergence
        ordinal = self._ordinals[step.name]
        self._ordinals[step.name] += 1
        key = f"{step.name}#{ordinal}"
        recorded: StepState | None = None
        if self._position < len(self._history):
            expected = self._history[self._position]
            if expected != key:
                # Remembered: workflow code that catches it cannot carry on past a divergence.
                self._divergence = NonDeterminismError(
                    self.run.id, self._position, expected, key
                )
                raise self._divergence
            recorded = self.run.steps[key]
        self._position += 1
        if recorded is not None:
            if recorded.status is StepStatus.COMPLETED:
                return step.codec.decode(recorded.output)
            if recorded.status is StepStatus.FAILED and not recorded.retryable:
                err = recorded.error
                assert err is not None
                raise StepFailedError(key, err.error_type, err.message)
        return self._execute(step, key, recorded, args, kwargs)

    def _execute(
        self,
        step: Step[..., Any],
        key: str,
        recorded: StepState | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        attempt = recorded.attempt if recorded else 0
        due = recorded.next_attempt_at if recorded else None
        while True:
            self._raise_if_preempted()
            if due is not None:
                self._wait_until(due)
            attempt += 1
            self._record(ev.StepStarted, step_key=key, step_name=step.name, attempt=attempt)
            self._save()
            state = self.run.steps[key]
            ctx = StepContext(
                run_id=self.run.id,
                step_key=key,
                attempt=attempt,
                last_checkpoint=state.checkpoint,
                checkpoint_sequence=state.checkpoint_sequence,
                sink=self,
            )
            started = time.perf_counter()
            reset = current_step.set(ctx)
            try:
                value = step.fn(*args, **kwargs)
            except Preempted as p:
                self._flush_checkpoint()
                self._record(
                    ev.StepPreempted,
                    step_key=key,
                    attempt=attempt,
                    last_checkpoint_sequence=ctx.checkpoint_sequence,
                    reason=p.reason,
                )
                raise
            except Exception as e:
                self._flush_checkpoint()
                due = self._record_failure(step, key, attempt, e, time.perf_counter() - started)
                if due is None:
                    raise StepFailedError(key, type(e).__name__, str(e)) from e
                continue
            finally:
                current_step.reset(reset)
            self._pending_checkpoint = None  # completion supersedes a throttled checkpoint
            encoded = step.codec.encode(value)
            self._record(
                ev.StepCompleted,
                step_key=key,
                attempt=attempt,
                output=encoded,
                duration_s=time.perf_counter() - started,
            )
            return step.codec.decode(encoded)

    def _record_failure(
        self, step: Step[..., Any], key: str, attempt: int, error: Exception, duration_s: float
    ) -> datetime | None:
        # Only failures spend the retry budget: a crash or a preemption is not the step's fault.
        failures = self.run.steps[key].failures + 1
        retryable = step.retry.is_retryable(error) and failures < step.retry.max_attempts
        due = (
            self.clock() + timedelta(seconds=step.retry.delay_s(failures)) if retryable else None
        )
        self._record(
            ev.StepFailed,
            step_key=key,
            attempt=attempt,
            error_type=type(error).__name__,
            message=str(error),
            retryable=retryable,
            next_attempt_at=due,
            duration_s=duration_s,
        )
        self._save()
        log.info(
            "step %s attempt %d failed (%s: %s)%s", key, attempt, type(error).__name__, error,
            f"; retry at {due.isoformat()}" if due else "; not retried",
        )
        return due

    # -- patch markers (audit, issue 6; see engine.patching) --------------------------------
    def patched(self, change_id: str) -> bool:
        """Whether the run takes the new path of `change_id` at this point of the body.

        A marker in the history says yes. Without one, a history that goes on past this point
        was written by the old code: the old path. At the end of the history the run is
        making new history, so it takes the new path and records the marker.
        """
        if self._divergence is not None:
            raise self._divergence
        if change_id in self.run.state.patches:
            return True
        if self._position < len(self._history):
            return False
        self._record(ev.PatchMarked, change_id=change_id)
        return True

    def _raise_if_preempted(self) -> None:
        if self.token.requested:
            raise Preempted(self.token.reason)

    def _wait_until(self, due: datetime) -> None:
        delay = (due - self.clock()).total_seconds()
        if delay > 0 and self.token.wait(delay):
            raise Preempted(self.token.reason)

    # -- checkpoints (the StepContext sink) -----------------------------------------------
    @property
    def preemption_requested(self) -> bool:
        return self.token.requested

    def checkpoint(self, ctx: StepContext, state: Any, done: int | None, total: int | None) -> None:
        encoded = JsonCodec(None, f"the checkpoint of step {ctx.step_key!r}").encode(state)
        ctx.checkpoint_sequence += 1
        ctx.last_checkpoint = encoded
        now = time.monotonic()
        throttled = now - self._last_checkpoint_at < self.checkpoint_min_interval_s
        self._pending_checkpoint = _Checkpoint(ctx, encoded, done, total)
        if not throttled or self.token.requested:
            self._flush_checkpoint()
            self._last_checkpoint_at = now
        if self.token.requested:
            raise Preempted(self.token.reason)

    def _flush_checkpoint(self) -> None:
        if self._pending_checkpoint is None:
            return
        cp, self._pending_checkpoint = self._pending_checkpoint, None
        self._record(
            ev.StepCheckpointed,
            step_key=cp.ctx.step_key,
            attempt=cp.ctx.attempt,
            sequence=cp.ctx.checkpoint_sequence,
            state=cp.state,
            progress_done=cp.done,
            progress_total=cp.total,
        )
        self._save()


def _resume_reason(run: WorkflowRun) -> ev.ResumeReason | None:
    if run.status is RunStatus.PENDING:
        return None
    if run.status is RunStatus.PREEMPTED:
        return ev.ResumeReason.AFTER_PREEMPTION
    if run.status is RunStatus.PARKED:  # audit: compatible code is back
        return ev.ResumeReason.AFTER_PARKING
    last = next(reversed(run.steps.values()), None)
    if last is not None and last.status is StepStatus.FAILED and last.retryable:
        return ev.ResumeReason.RETRY_DUE
    return ev.ResumeReason.CRASH_RECOVERY
