"""Fault injection: stop a run at its Nth step execution or at a step's Kth checkpoint.

It works from outside the engine's driver, so the code under test is the code that ships: the
harness registers a twin of the workflow whose body, once the driver runs it, puts a proxy in
front of the driver. The proxy hands the driver twins of the steps; a step twin checks the
fault before and after the real step function, and routes the step's checkpoints through a
sink that checks the fault around the real (durable) checkpoint.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.context import CheckpointSink, StepContext, current_runner, current_step
from engine.definitions import Step, StepCall, Workflow
from engine.fingerprints import Fingerprint
from engine.preemption import PreemptionToken

FaultKind = Literal["crash", "halt", "preempt"]
When = Literal["start", "end"]


class InjectedHalt(BaseException):
    """The in-process stand-in for a crash: unwinds the drive, writing nothing more to the log.

    A BaseException so neither step code's `except Exception` nor the engine's retry logic
    catches it; the engine lets it through without recording anything, as a dead process would.
    """


@dataclass(frozen=True)
class Fault:
    """Where to interrupt a run, and how.

    `step`: the Nth step execution of the drive (1-based; replayed steps do not count), a step
    key (`"load#0"`), or a step name (`"load"`, its first execution). `checkpoint`: the Kth
    checkpoint (1-based) of the matching step executions (of any step without `step`).
    `when`: for a step fault, interrupt as the step starts (before its function runs) or as
    it ends (its function returned, its completion not yet recorded: the at-least-once window).

    Kinds: `crash` kills the driving process for real (SIGKILL; the harness runs the drive in a
    child process); `halt` is the in-process imitation (writes nothing more, but see the
    harness docs for where it differs); `preempt` sets the engine's preemption token there,
    exactly as SIGTERM would.
    """

    kind: FaultKind
    step: int | str | None = None
    checkpoint: int | None = None
    when: When = "start"

    def __post_init__(self) -> None:
        if self.step is None and self.checkpoint is None:
            raise ValueError("a Fault needs step=N, step='name#i', or checkpoint=K (or both)")
        if isinstance(self.step, int) and self.step < 1:
            raise ValueError(f"step={self.step}: step executions are counted from 1")
        if self.checkpoint is not None and self.checkpoint < 1:
            raise ValueError(f"checkpoint={self.checkpoint}: checkpoints are counted from 1")
        if self.checkpoint is not None and self.when != "start":
            raise ValueError("when= applies to step faults; a checkpoint fault fires at it")

    @classmethod
    def crash(cls, *, step: int | str | None = None, checkpoint: int | None = None,
              when: When = "start") -> Fault:
        return cls("crash", step, checkpoint, when)

    @classmethod
    def halt(cls, *, step: int | str | None = None, checkpoint: int | None = None,
             when: When = "start") -> Fault:
        return cls("halt", step, checkpoint, when)

    @classmethod
    def preempt(cls, *, step: int | str | None = None, checkpoint: int | None = None,
                when: When = "start") -> Fault:
        return cls("preempt", step, checkpoint, when)

    def describe(self) -> str:
        where = [f"step {self.step!r}"] if self.step is not None else []
        if self.checkpoint is not None:
            where.append(f"checkpoint {self.checkpoint}")
        else:
            where.append(f"at its {self.when}")
        return f"{self.kind} at " + ", ".join(where)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "checkpoint": self.checkpoint,
                "when": self.when}


class FaultInjector:
    """Counts step executions and checkpoints during one drive, and fires the fault once."""

    def __init__(self, fault: Fault | None, token: PreemptionToken) -> None:
        self.fault = fault
        self.token = token
        self.fired = False
        self._ordinal = 0
        self._checkpoints = 0
        self._targets: set[str] = set()  # keys whose execution in flight matches `step`

    def _step_matches(self, key: str, ordinal: int) -> bool:
        target = self.fault.step if self.fault else None
        if target is None:
            return True
        if isinstance(target, int):
            return ordinal == target
        return key == target if "#" in target else key.partition("#")[0] == target

    def _fire(self) -> None:
        assert self.fault is not None
        self.fired = True
        if self.fault.kind == "preempt":
            self.token.request(f"fault injected: {self.fault.describe()}")
        elif self.fault.kind == "halt":
            raise InjectedHalt(self.fault.describe())
        else:
            os.kill(os.getpid(), signal.SIGKILL)  # what kill -9 does: no cleanup, no flush

    def _armed(self) -> bool:
        return self.fault is not None and not self.fired

    def step_starts(self, key: str) -> None:
        self._ordinal += 1
        self._targets.discard(key)
        if not self._armed() or not self._step_matches(key, self._ordinal):
            return
        assert self.fault is not None
        if self.fault.checkpoint is None and self.fault.when == "start":
            self._fire()
        else:
            self._targets.add(key)

    def step_ends(self, key: str) -> None:
        if self._armed() and key in self._targets and self.fault is not None \
                and self.fault.checkpoint is None:
            self._fire()

    def checkpoint(self, key: str, persist: Callable[[], None]) -> None:
        """Around one durable checkpoint: a preemption is asked for before it (so it is
        persisted and then unwinds, as with SIGTERM); a crash or halt happens after it."""
        hit = self._armed() and key in self._targets
        if hit:
            self._checkpoints += 1
            assert self.fault is not None
            hit = self._checkpoints == self.fault.checkpoint
        if hit and self.fault is not None and self.fault.kind == "preempt":
            self._fire()
        persist()
        if hit:
            self._fire()


class _CheckingSink:
    """Forwards a step's checkpoints to the driver, with the injector around each one."""

    def __init__(self, inner: CheckpointSink, injector: FaultInjector, key: str) -> None:
        self._inner = inner
        self._injector = injector
        self._key = key

    def checkpoint(self, ctx: StepContext, state: Any, done: int | None, total: int | None,
                   source: Fingerprint | None = None, effects: Iterable[str] = ()) -> None:
        self._injector.checkpoint(
            self._key, lambda: self._inner.checkpoint(ctx, state, done, total, source, effects)
        )

    @property
    def preemption_requested(self) -> bool:
        return self._inner.preemption_requested

    @property
    def cancel_requested(self) -> bool:
        return self._inner.cancel_requested


def _step_twin(step: Step[..., Any], injector: FaultInjector) -> Step[..., Any]:
    def body(*args: Any, **kwargs: Any) -> Any:
        ctx = current_step.get()
        assert ctx is not None, "the driver sets the step context before calling a step"
        if ctx._sink is not None:
            ctx._sink = _CheckingSink(ctx._sink, injector, ctx.step_key)
        injector.step_starts(ctx.step_key)
        value = step.fn(*args, **kwargs)
        injector.step_ends(ctx.step_key)
        return value

    twin: Step[..., Any] = Step(body, step.name, step.retry, step.checkpoints,
                                step.timeout_s)
    twin.codec = step.codec  # the real step's declared output type, not the wrapper's
    return twin


class _RunnerProxy:
    """Stands in front of the run's driver: the same calls, with step twins."""

    def __init__(self, inner: Any, injector: FaultInjector) -> None:
        self._inner = inner
        self._injector = injector
        self._twins: dict[int, Step[..., Any]] = {}

    def _twin(self, step: Step[..., Any]) -> Step[..., Any]:
        if id(step) not in self._twins:
            self._twins[id(step)] = _step_twin(step, self._injector)
        return self._twins[id(step)]

    def call_step(self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._inner.call_step(self._twin(step), args, kwargs)

    def gather(self, calls: Sequence[StepCall[Any]], limit: int) -> list[Any]:
        twins = [StepCall(self._twin(c.step), c.args, c.kwargs) for c in calls]
        result: list[Any] = self._inner.gather(twins, limit)
        return result

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def patched(self, change_id: str) -> bool:
        result: bool = self._inner.patched(change_id)
        return result


def instrumented(
    wf: Workflow[..., Any], injector: Callable[[], FaultInjector | None]
) -> Workflow[..., Any]:
    """A twin of `wf` (same name, version, input and output types) that consults the
    injector `injector()` returns while a driver runs it; with None it is just `wf`."""

    @functools.wraps(wf.fn)  # keeps the signature and annotations the input model is built from
    def body(*args: Any, **kwargs: Any) -> Any:
        active, inner = injector(), current_runner.get()
        if active is None or inner is None:
            return wf.fn(*args, **kwargs)
        reset = current_runner.set(_RunnerProxy(inner, active))
        try:
            return wf.fn(*args, **kwargs)
        finally:
            current_runner.reset(reset)

    twin = copy.copy(wf)
    twin.fn = body
    return twin
