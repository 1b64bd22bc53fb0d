"""Drives one run: re-executes the workflow body, replaying recorded steps and running new ones.

Cost model (DESIGN section 7): a step's completion is held in memory until the workflow asks
for its next step, and is committed together with that step's start, so a sequential step costs
one commit. Holding it is safe because workflow code between steps has no side effects; a crash
in that window only runs the step again, inside the at-least-once contract.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine import checkpoints
from engine import events as ev
from engine.aggregate import RunCommandError, StepState, WorkflowRun
from engine.context import StepContext, current_runner, current_step
from engine.definitions import Step, StepCall, Workflow
from engine.driver_control import DriverControl
from engine.errors import (
    ConfigurationError,
    EngineError,
    NonDeterminismError,
    OutputEncodingError,
    StepFailedError,
    StepTimeoutError,
    StoreUnavailableError,
)
from engine.logcontext import get_logger
from engine.observe import log_events
from engine.preemption import Preempted, PreemptionToken
from engine.results import RunResult
from engine.status import RunStatus, StepStatus
from engine.stopping import (
    DEFAULT_LIMITS,
    Cancelled,
    CancelRequest,
    DeadlinePassed,
    LimitReached,
    RunLimits,
    StopRules,
    call_bounded,
)
from engine.store import RunStore
from engine.tracing import TRACER
from engine.unwinding import Abandon, Halt, Suspend

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.workers.leases import LeaseStore

log = get_logger("stepstone.engine")

Observer = Callable[[WorkflowRun, Sequence[Any]], None]
"""Told about the events of each successful save (logs, metrics)."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RunDriver(DriverControl):
    """Drives one run in this thread (and its fan-out branches in a few more).

    `saver` commits the run's pending events (the engine's group commit, so the runs one
    process drives share transactions). `lease_check` is called before every save and raises
    `LeaseLostError` once this process may no longer hold the run. `suspend_after_s`, when
    given, makes waits longer than that (retry backoff, durable sleep) end the drive instead
    of blocking, so a worker can hand the run back until it is due; a local drive blocks.

    Its step-execution interface, for fan-out (`engine.fanout`) and the deploy check
    (`engine.audit.replay_check`): `next_position(name)` gives the next call's key and recorded
    state, checked against the history; `execute(...)` runs attempts of one step until it
    completes or fails for good; `record(command, ...)` calls a `WorkflowRun` command as this
    writer; `save()` commits what is pending; `wait_until(due)` waits (or suspends) for a due
    time; `replayed(...)` is a step's recorded outcome.
    """

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
        lease_check: Callable[[], None] | None = None,
        suspend_after_s: float | None = None,
        resume_reason: ev.ResumeReason | None = None,
        saver: Callable[[WorkflowRun], None] | None = None,
        observers: Sequence[Observer] = (log_events,),
        cancel_check: Callable[[], CancelRequest | None] | None = None,
        limits: RunLimits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.saver = saver or store.save_run
        self.observers = observers
        self.run = run
        self.definition = definition
        self.worker_id = worker_id
        self.token = token
        self.checkpoint_min_interval_s = checkpoint_min_interval_s
        self.clock = clock
        self.lease_check = lease_check
        self.suspend_after_s = suspend_after_s
        self.resume_reason = resume_reason
        self.resume_at: datetime | None = None
        self._history = list(run.steps)
        self._position = 0
        self._ordinals: Counter[str] = Counter()
        self._pending_checkpoints: dict[str, checkpoints.Pending] = {}
        self._last_checkpoint_at: dict[str, float] = {}
        self._divergence: NonDeterminismError | None = None
        self._abandoned: EngineError | None = None
        self.stops = StopRules(token, cancel_check, clock, limits)
        self.limits = limits
        # Fan-out branches record from their own threads; one lock keeps the aggregate and its
        # pending events consistent (steps are long, so it is never contended for long).
        self._lock = threading.RLock()
        self.inbox: LeaseStore | None = None
        """Where `receive()` finds the run's messages (engine.messages); set by the engine."""
        self.child_engine: Engine | None = None
        """What starts and reads child runs (engine.children); set by the engine."""

    # -- recording ------------------------------------------------------------------------
    def record(self, command: Callable[..., None], *args: Any, **fields: Any) -> None:
        """Call one of the run's commands (`self.run.start_step`...) as this writer, now."""
        with self._lock:
            if self._abandoned is not None:
                raise Abandon(self._abandoned)
            try:
                command(*args, at=self.clock(), worker=self.worker_id, **fields)
            except RunCommandError as e:  # an engine bug, never the user's failure: the
                raise Halt(e) from e      # run keeps what it saved and stays resumable

    def save(self) -> None:
        with self._lock:
            if self._abandoned is not None:
                raise Abandon(self._abandoned)
            events = list(self.run.pending_events)
            try:
                if self.lease_check is not None:
                    self.lease_check()
                self.saver(self.run)
            except EngineError as e:
                # A conflict or a lost lease is the fence: another worker owns the run now. A
                # store fault leaves the outcome unknown, and the aggregate holds events the
                # log may lack. Either way nothing more is written from this copy.
                self._abandoned = e
                raise Abandon(e) from e
            except Exception as e:  # an error outside the engine's root: the same rule
                self._abandoned = StoreUnavailableError(
                    self.store.location.display, f"{type(e).__name__}: {e}"
                )
                raise Abandon(self._abandoned) from e
            for observer in self.observers:
                try:
                    observer(self.run, events)
                except Exception:  # telling must never cost the run its progress
                    log.exception("an event observer failed; the events are saved")

    # -- the run --------------------------------------------------------------------------
    def drive(self) -> RunResult:
        """Run the workflow body until the run ends, is preempted, or (worker) must wait.

        Raises `RunConflictError`/`LeaseLostError` when another worker took the run over,
        `StoreUnavailableError` when a save failed or may have failed (nothing more is written
        from this copy of the run: resume reloads it from the log), and `NonDeterminismError`
        when the body no longer matches the history; none of them writes.
        """
        try:
            return self._drive()
        except Abandon as a:
            log.warning("run %s abandoned: %s", self.run.id, a.error)
            raise a.error from None
        except Halt as h:
            raise h.error from None

    def _drive(self) -> RunResult:
        run = self.run
        if run.status.is_terminal and self.resume_reason is not ev.ResumeReason.FORCED:
            return RunResult.of(run)
        reason = _resume_reason(run)
        attributes = {
            "stepstone.run_id": str(run.id),
            "stepstone.workflow": run.state.workflow,
            "stepstone.worker_id": self.worker_id,
            "stepstone.resume_reason": (self.resume_reason or reason or "start"),
        }
        with TRACER.run_span(attributes, f"run {run.state.workflow}") as span:
            result = self._drive_body(reason)
            TRACER.outcome(span, result.status.value)
            return result

    def _drive_body(self, reason: ev.ResumeReason | None) -> RunResult:
        run = self.run
        stop = self.stops.pending(run.state.deadline)
        if isinstance(stop, (Cancelled, DeadlinePassed)) and not run.status.is_terminal:
            return self._stopped(stop)  # cancelled or past its deadline before it ran again
        if reason is not None:
            # Pending until the first real write: a run that diverges is left untouched.
            self.record(run.resume, self.resume_reason or reason)
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
        except (Cancelled, DeadlinePassed) as stop:
            return self._stopped(stop)
        except Preempted as p:
            self.record(run.preempt, p.reason)
            self.save()
            log.info("run %s preempted: %s", run.id, p.reason)
            return RunResult.of(run)
        except LimitReached as limit:
            self._flush_checkpoints()
            self._fail(limit.error_type, limit.message, limit.step_key)
            return RunResult.of(run)
        except Suspend as s:
            self._flush_checkpoints()
            self.save()
            self.resume_at = s.due
            log.info("run %s waits until %s", run.id, s.due.isoformat())
            return RunResult.of(run, resume_at=s.due)
        except NonDeterminismError:
            raise  # before any write: the log stays exactly as it was
        except (OutputEncodingError, ConfigurationError, Halt):
            # The engine could not record something (an unencodable value, a bad annotation):
            # keep what is valid, leave the run resumable once the code is fixed.
            self._flush_checkpoints()
            self.save()
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
        self.record(run.complete, encoded)
        self.save()
        return RunResult.of(run)

    def _stopped(self, stop: Cancelled | DeadlinePassed) -> RunResult:
        """Record the end a cancel or the deadline asked for (`engine.stopping`)."""
        self._flush_checkpoints()
        if isinstance(stop, Cancelled):
            r = stop.request
            self.record(self.run.cancel, r.by, r.reason, requested_at=r.requested_at)
        else:
            self.record(self.run.time_out, stop.step_key)
        self.save()
        log.info("run %s stopped: %s", self.run.id, stop.reason)
        return RunResult.of(self.run)

    def _fail(self, error_type: str, message: str, step_key: str | None) -> None:
        self.record(self.run.fail, error_type, message, step_key)
        self.save()  # logged once, by engine.observe, as RunFailed

    # -- positions ------------------------------------------------------------------------
    def next_position(self, name: str) -> tuple[str, StepState | None]:
        """The key of the body's next durable call, checked against the recorded history."""
        if current_step.get() is not None:
            raise RuntimeError(
                f"{name!r} was called from inside a step; call steps, sleeps and gathers "
                "from the workflow body so each is recorded on its own"
            )
        if self._divergence is not None:
            raise self._divergence
        ordinal = self._ordinals[name]
        self._ordinals[name] += 1
        key = f"{name}#{ordinal}"
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
        return key, recorded

    # -- steps ----------------------------------------------------------------------------
    def call_step(self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key, recorded = self.next_position(step.name)
        value = replayed(step, key, recorded)
        if value is not NOT_RECORDED:
            return value
        return self.execute(step, key, recorded, args, kwargs)

    def execute(
        self,
        step: Step[..., Any],
        key: str,
        recorded: StepState | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        started: int | None = None,
    ) -> Any:
        """Run attempts of one step until one completes or the failure is final.

        `started` is an attempt whose `StepStarted` the caller already recorded (a fan-out
        records its branches' starts in list order, so their history order is stable).
        """
        attempt = recorded.attempt if recorded else 0
        due = recorded.next_attempt_at if recorded else None
        while True:
            if started is None:
                self._raise_if_preempted(key)
                if due is not None:
                    self.wait_until(due)
                attempt += 1
                self.record(self.run.start_step, key, step.name, attempt)
                self.save()
            else:
                attempt, started = started, None
            state = self.run.steps[key]
            ctx = StepContext(
                run_id=self.run.id,
                step_key=key,
                attempt=attempt,
                last_checkpoint=state.checkpoint,
                checkpoint_sequence=state.checkpoint_sequence,
                sink=self,
                checkpoint_version=step.checkpoints.version,
            )
            t0 = time.perf_counter()
            bound = self._attempt_bound(step, ctx)
            reset = current_step.set(ctx)
            span_cm = TRACER.step_span(
                {"stepstone.run_id": str(self.run.id), "stepstone.step_key": key,
                 "stepstone.step": step.name, "stepstone.attempt": attempt},
                f"step {key}",
            )
            span = span_cm.__enter__()
            try:
                ctx.last_checkpoint = checkpoints.resume_state(self, step, ctx, args, kwargs)
                if bound is None:
                    value = step.fn(*args, **kwargs)
                else:
                    value = call_bounded(
                        step.fn, args, kwargs, limit_s=bound, name=f"stepstone-step-{key}",
                        on_abandon=functools.partial(self._abandon_attempt, step, ctx),
                    )
                if ctx.timed_out:  # told at a checkpoint, and the step carried on regardless
                    raise StepTimeoutError(key, step.timeout_s or 0.0)
                TRACER.outcome(span, "completed")
            except Preempted as p:
                TRACER.event("preempted", {"stepstone.reason": p.reason,
                                           "stepstone.checkpoint": ctx.checkpoint_sequence})
                TRACER.outcome(span, "preempted")
                self._flush_checkpoint(key)
                self.record(
                    self.run.preempt_step, key, attempt, ctx.checkpoint_sequence, p.reason
                )
                raise
            except LimitReached as limit:
                TRACER.outcome(span, "failed", limit)
                self._pending_checkpoints.pop(key, None)  # the cap: write no more of them
                self.record(
                    self.run.fail_step, key, attempt, limit.error_type, limit.message,
                    retryable=False, next_attempt_at=None, duration_s=time.perf_counter() - t0,
                )
                raise
            except Exception as e:
                TRACER.outcome(span, "failed", e)
                self._flush_checkpoint(key)
                due = self._record_failure(step, key, attempt, e, time.perf_counter() - t0)
                if due is None:
                    raise StepFailedError(key, type(e).__name__, str(e)) from e
                continue
            finally:
                span_cm.__exit__(None, None, None)
                current_step.reset(reset)
            self._pending_checkpoints.pop(key, None)  # completion supersedes a throttled one
            try:
                encoded = step.codec.encode(value)
            except EngineError as e:  # past user code that could catch it as its own
                raise Halt(e) from e
            self.record(
                self.run.complete_step, key, attempt, encoded, time.perf_counter() - t0
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
        self.record(
            self.run.fail_step, key, attempt, type(error).__name__, str(error),
            retryable=retryable, next_attempt_at=due, duration_s=duration_s,
        )
        self.save()  # logged once, by engine.observe, as StepFailed
        return due

    # -- patch markers (audit; see engine.patching) --------------------------------
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
        self.record(self.run.mark_patch, change_id)
        return True

    # -- durable waits (sleep: engine.driver_control) ------------------------------------
    def receive(self, topic: str, timeout_s: float | None) -> Any:
        """Wait durably for a message on `topic`; see `engine.messages`."""
        from engine.messages import receive_in  # it builds on this module

        return receive_in(self, topic, timeout_s)

    def child(self, workflow: Workflow[..., Any], input: Any) -> Any:
        """Run a child workflow and wait for it; see `engine.children`."""
        from engine.children import child_in  # it builds on this module

        return child_in(self, workflow, input)

    # -- fan-out --------------------------------------------------------------------------
    def gather(self, calls: Sequence[StepCall[Any]], limit: int) -> list[Any]:
        """Run independent steps in parallel (at most `limit` at once); see `engine.fanout`."""
        from engine.fanout import gather_branches  # it builds on this module

        return gather_branches(self, calls, limit)

NOT_RECORDED: Any = object()


def replayed(step: Step[..., Any], key: str, recorded: StepState | None) -> Any:
    """The recorded outcome of a step, or `NOT_RECORDED` if it has to run (again)."""
    if recorded is None:
        return NOT_RECORDED
    if recorded.status is StepStatus.COMPLETED:
        return step.codec.decode(recorded.output)
    if recorded.status is StepStatus.FAILED and not recorded.retryable:
        err = recorded.error
        assert err is not None
        raise StepFailedError(key, err.error_type, err.message)
    return NOT_RECORDED


def _resume_reason(run: WorkflowRun) -> ev.ResumeReason | None:
    if run.status is RunStatus.PENDING:
        return None
    if run.status is RunStatus.PREEMPTED:
        return ev.ResumeReason.AFTER_PREEMPTION
    if run.status is RunStatus.PARKED:  # audit: compatible code is back
        return ev.ResumeReason.AFTER_PARKING
    if run.status is RunStatus.WAITING:  # the newest step is what it waits on
        waits = {"receive": ev.ResumeReason.MESSAGE_WAIT, "child": ev.ResumeReason.CHILD_WAIT}
        return waits.get(next(reversed(run.steps.values())).name, ev.ResumeReason.TIMER_DUE)
    last = next(reversed(run.steps.values()), None)
    if last is not None and last.status is StepStatus.FAILED and last.retryable:
        return ev.ResumeReason.RETRY_DUE
    return ev.ResumeReason.CRASH_RECOVERY
