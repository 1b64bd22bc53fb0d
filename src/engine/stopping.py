"""What stops a run from outside its code: a cancel, its deadline, a step's timeout, a runaway
limit; and how the driver notices each one at its checkpoints, step boundaries and waits.

Python cannot stop a thread, so every stop is cooperative: step code learns of one at its next
`checkpoint()` (which saves the checkpoint, then unwinds) or at the next step boundary. A step
attempt with a time bound (its own `timeout`, or the run's deadline) runs in a thread of its
own, so the driver can stop *waiting* for it when the bound passes: the attempt is recorded as
timed out and its thread, which nothing can kill, is left to finish; its later checkpoints
unwind it without writing (`AttemptAbandoned`). docs/controlling-runs.md says what this means
for a step's side effects.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.preemption import Preempted, PreemptionToken


@dataclass(frozen=True)
class CancelRequest:
    """Who asked for a run to be cancelled, why and when (kept beside the log until the run's
    holder records `RunCancelled`; see `engine.workers.cancels`)."""

    by: str
    reason: str
    requested_at: datetime


@dataclass(frozen=True)
class RunLimits:
    """Caps that stop a runaway run before it fills the disk (see `Settings`)."""

    max_events_per_run: int = 10_000_000
    max_checkpoints_per_minute: int = 60_000
    step_timeout_grace_s: float = 2.0


DEFAULT_LIMITS = RunLimits()


class Cancelled(Preempted):
    """Unwinds the run's code for a cancel, as a preemption does, with progress saved; the
    driver then records `RunCancelled` instead of `RunPreempted`."""

    def __init__(self, request: CancelRequest) -> None:
        self.request = request
        super().__init__(f"cancelled by {request.by}: {request.reason}")


class DeadlinePassed(Preempted):
    """Unwinds the run's code at its deadline; the driver records `RunTimedOut`."""

    def __init__(self, deadline: datetime, step_key: str | None = None) -> None:
        self.deadline = deadline
        self.step_key = step_key
        super().__init__(f"deadline {deadline.isoformat()} passed")


class LimitReached(BaseException):
    """A runaway limit was hit: the run fails with `message`, which names the step and the cap.

    A BaseException, so step code that catches `Exception` cannot keep on writing.
    """

    error_type = "RunawayLimitError"

    def __init__(self, message: str, step_key: str | None) -> None:
        self.message = message
        self.step_key = step_key
        super().__init__(message)


class AttemptAbandoned(BaseException):
    """Unwinds the thread of a step attempt the driver stopped waiting for (past its timeout):
    its result was already recorded as a timeout, so nothing it does is written any more."""


class StopRules:
    """The driver's view of every stop, checked at checkpoints, step boundaries and waits.

    `cancel_check` says whether someone asked to cancel the run (an in-memory look-up that the
    lease keeper's poll keeps current; None for a driver nobody can cancel, as in tests).
    """

    def __init__(
        self,
        token: PreemptionToken,
        cancel_check: Callable[[], CancelRequest | None] | None,
        clock: Callable[[], datetime],
        limits: RunLimits,
    ) -> None:
        self.token = token
        self.cancel_check = cancel_check
        self.clock = clock
        self.limits = limits

    def cancel(self) -> CancelRequest | None:
        return self.cancel_check() if self.cancel_check is not None else None

    def pending(self, deadline: datetime | None, step_key: str | None = None) -> Preempted | None:
        """The stop to unwind for now, if any: a cancel first (a person asked), then the
        deadline, then preemption (which only pauses the run)."""
        request = self.cancel()
        if request is not None:
            return Cancelled(request)
        if deadline is not None and self.clock() >= deadline:
            return DeadlinePassed(deadline, step_key)
        if self.token.requested:
            return Preempted(self.token.reason)
        return None

    def wait(self, seconds: float, deadline: datetime | None) -> Preempted | None:
        """Sleep up to `seconds`, waking for any stop; the stop, or None if the time passed."""
        end = time.monotonic() + seconds
        while True:
            stop = self.pending(deadline)
            if stop is not None:
                return stop
            left = end - time.monotonic()
            if left <= 0:
                return None
            # Preemption wakes the wait at once; a cancel is seen within the poll's period.
            if self.token.wait(min(left, 0.25)):
                return Preempted(self.token.reason)

    def check_events(self, version: int, step_key: str | None) -> None:
        cap = self.limits.max_events_per_run
        if version >= cap:
            where = f" (step {step_key} was running)" if step_key else ""
            raise LimitReached(
                f"the run reached {cap:,} events, the max_events_per_run limit{where}; "
                "a loop that records without end? Fix the code and start a new run, or raise "
                "the limit (STEPSTONE_MAX_EVENTS_PER_RUN) if the run really needs more",
                step_key,
            )


class CheckpointRate:
    """Counts one attempt's written checkpoints per minute, against the runaway cap."""

    def __init__(self) -> None:
        self.window_start = time.monotonic()
        self.count = 0

    def add(self, cap: int, step_key: str) -> None:
        now = time.monotonic()
        if now - self.window_start >= 60.0:
            self.window_start, self.count = now, 0
        self.count += 1
        if self.count > cap:
            raise LimitReached(
                f"step {step_key} wrote more than {cap:,} checkpoints within a minute, the "
                "max_checkpoints_per_minute limit; a loop that checkpoints without progress? "
                "Checkpoint less often (or set checkpoint_min_interval_s), or raise the limit "
                "(STEPSTONE_MAX_CHECKPOINTS_PER_MINUTE) if the rate is intended",
                step_key,
            )


def call_bounded(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    limit_s: float,
    on_abandon: Callable[[], BaseException],
    name: str,
) -> Any:
    """`fn(*args, **kwargs)` in a thread of its own; past `limit_s`, stop waiting for it.

    The thread runs in a copy of the caller's context (the step's `step_context()` goes with
    it). What it raises is raised here; if it is still running at `limit_s`, `on_abandon()`
    marks the attempt abandoned and gives the exception to raise instead.
    """
    box: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(fn, *args, **kwargs)
        except BaseException as e:  # handed to the waiting driver thread
            box["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    if not done.wait(max(0.0, limit_s)):
        raise on_abandon()
    if "error" in box:
        raise box["error"]
    return box["value"]
