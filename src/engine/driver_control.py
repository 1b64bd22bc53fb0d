"""The part of a run's driver that decides when a run stops and where its checkpoints go.

A mixin of `RunDriver` (kept apart so each module stays small): the stops a driver checks at
step boundaries, waits and checkpoints (`engine.stopping`: preemption, a cancel, the deadline,
runaway limits, an attempt's timeout), durable sleep, and the `StepContext` sink that records
checkpoints, throttled, validated (`engine.checkpoints`) and counted against the runaway cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from engine import checkpoints
from engine.aggregate import StepState, WorkflowRun
from engine.context import StepContext
from engine.definitions import JsonCodec, Step
from engine.errors import EngineError, StepTimeoutError
from engine.fingerprints import Fingerprint
from engine.logcontext import get_logger
from engine.preemption import Preempted, PreemptionToken
from engine.status import StepStatus
from engine.stopping import (
    AttemptAbandoned,
    Cancelled,
    CheckpointRate,
    DeadlinePassed,
    RunLimits,
    StopRules,
)
from engine.tracing import TRACER
from engine.unwinding import Halt, Suspend

log = get_logger("stepstone.engine")


class DriverControl:
    """Stops and checkpoints for `RunDriver`, which sets every attribute declared here."""

    run: WorkflowRun
    token: PreemptionToken
    clock: Callable[[], datetime]
    stops: StopRules
    limits: RunLimits
    suspend_after_s: float | None
    checkpoint_min_interval_s: float
    _lock: threading.RLock
    _pending_checkpoints: dict[str, checkpoints.Pending]
    _last_checkpoint_at: dict[str, float]

    # RunDriver's own methods, which these call.
    record: Callable[..., None]
    save: Callable[[], None]
    next_position: Callable[[str], tuple[str, StepState | None]]

    # -- stops (engine.stopping) -----------------------------------------------------------
    def stop_pending(self, step_key: str | None = None) -> Preempted | None:
        """The stop the run should unwind for now (cancel, deadline, preemption), if any."""
        return self.stops.pending(self.run.state.deadline, step_key)

    def _raise_if_preempted(self, step_key: str | None = None) -> None:
        stop = self.stop_pending(step_key)
        if stop is not None:
            raise stop
        self.stops.check_events(self.run.version, step_key)

    def _attempt_bound(self, step: Step[..., Any], ctx: StepContext) -> float | None:
        """How long the driver waits for this attempt before abandoning it, if bounded: its
        timeout, or what is left of the run's deadline, plus a grace to reach a checkpoint."""
        bounds = []
        if step.timeout_s is not None:
            ctx.timeout_s = step.timeout_s
            ctx.timeout_at = time.monotonic() + step.timeout_s
            bounds.append(step.timeout_s)
        deadline = self.run.state.deadline
        if deadline is not None:
            bounds.append((deadline - self.clock()).total_seconds())
        if not bounds:
            return None
        return max(0.0, min(bounds)) + self.limits.step_timeout_grace_s

    def _abandon_attempt(self, step: Step[..., Any], ctx: StepContext) -> BaseException:
        """The driver stops waiting for an attempt past its bound: what to record instead."""
        with self._lock:
            self._flush_checkpoint(ctx.step_key)  # what it reached before its bound is kept
            ctx.abandoned = True  # its thread writes nothing more
        deadline = self.run.state.deadline
        if deadline is not None and self.clock() >= deadline:
            return DeadlinePassed(deadline, ctx.step_key)
        log.warning("run %s: abandoned attempt %d of step %s past its %gs timeout",
                    self.run.id, ctx.attempt, ctx.step_key, step.timeout_s or 0.0)
        return StepTimeoutError(ctx.step_key, step.timeout_s or 0.0, abandoned=True)

    def wait_until(self, due: datetime) -> None:
        deadline = self.run.state.deadline
        until = due if deadline is None else min(due, deadline)
        delay = (until - self.clock()).total_seconds()
        if delay > 0:
            if self.suspend_after_s is not None and delay > self.suspend_after_s:
                raise Suspend(until)  # a worker comes back then (at the deadline, to stop it)
            stop = self.stops.wait(delay, deadline)
            if stop is not None:
                raise stop
        if deadline is not None and self.clock() >= deadline:
            raise DeadlinePassed(deadline)

    # -- checkpoints (the StepContext sink) -----------------------------------------------
    @property
    def preemption_requested(self) -> bool:
        return self.token.requested

    @property
    def cancel_requested(self) -> bool:
        return isinstance(self.stop_pending(), (Cancelled, DeadlinePassed))

    def checkpoint(self, ctx: StepContext, state: Any, done: int | None, total: int | None,
                   source: Fingerprint | None = None, effects: Iterable[str] = ()) -> None:
        try:
            encoded = JsonCodec(None, f"the checkpoint of step {ctx.step_key!r}").encode(state)
        except EngineError as e:  # not the step's failure: the run stays resumable
            raise Halt(e) from e
        ctx.checkpoint_sequence += 1
        ctx.last_checkpoint = encoded
        now = time.monotonic()
        last = self._last_checkpoint_at.get(ctx.step_key, 0.0)
        throttled = now - last < self.checkpoint_min_interval_s
        with self._lock:  # an abandoned attempt's thread must not leave one behind
            if ctx.abandoned:
                raise AttemptAbandoned(ctx.step_key)
            self._pending_checkpoints[ctx.step_key] = checkpoints.Pending.of(
                self._pending_checkpoints.get(ctx.step_key), ctx, encoded, done, total, source,
                effects)
        TRACER.event("checkpoint", {"stepstone.sequence": ctx.checkpoint_sequence})
        stop = self.stop_pending(ctx.step_key)
        overdue = ctx.timeout_at is not None and time.monotonic() >= ctx.timeout_at
        if not throttled or stop is not None or overdue:
            self.stops.check_events(self.run.version, ctx.step_key)
            if ctx.rate is None:
                ctx.rate = CheckpointRate()
            ctx.rate.add(self.limits.max_checkpoints_per_minute, ctx.step_key)
            self._flush_checkpoint(ctx.step_key)
            self._last_checkpoint_at[ctx.step_key] = now
        if stop is not None:
            raise stop
        if overdue:
            ctx.timed_out = True
            raise StepTimeoutError(ctx.step_key, ctx.timeout_s or 0.0)

    def _flush_checkpoints(self) -> None:
        for key in list(self._pending_checkpoints):
            self._flush_checkpoint(key)

    def _flush_checkpoint(self, key: str) -> None:
        cp = self._pending_checkpoints.pop(key, None)
        if cp is None or cp.ctx.abandoned:
            return
        self.record(
            self.run.checkpoint_step, cp.ctx.step_key, cp.ctx.attempt,
            cp.ctx.checkpoint_sequence, cp.state, cp.done, cp.total,
            version=cp.ctx.checkpoint_version, source=cp.source, effects=cp.effects,
        )
        self.save()

    # -- durable sleep --------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        """Wait durably: the wake time is recorded first, so a restart keeps the deadline."""
        key, recorded = self.next_position("sleep")
        if recorded is not None and recorded.status is StepStatus.COMPLETED:
            return
        self._raise_if_preempted(key)
        if recorded is None or recorded.wake_at is None:
            wake_at = self.clock() + timedelta(seconds=max(0.0, seconds))
            self.record(self.run.start_timer, key, wake_at, seconds)
            self.save()
        else:
            wake_at = recorded.wake_at
        self.wait_until(wake_at)
        self.record(self.run.fire_timer, key)  # held, like a completion
