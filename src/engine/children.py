"""Child workflows: `child(workflow, input)` in a body starts a run of its own and waits for it.

Identity (DESIGN section 12): the child is started with the idempotency key
`child:PARENT_RUN_ID/STEP_KEY`, so its run id is derived from the parent's run id and the call's
position; a replay, a crash between the start and its record, or two workers racing all find
the same child. The parent records `ChildStarted` (the child's id) and, once the child has
ended, `ChildFinished` with its output or its error; replay returns the recorded output, or
raises the recorded failure as `ChildFailedError`, without looking at the child again.

Waiting: under a worker the parent is handed back (status `waiting`, no thread held) and any
worker drives the child; the child's end wakes the parent (the parent's id is in the child's
key), and a parent handed back looks at its child once more afterwards, so an end that lands
in between is not missed. A local drive (`engine.run`) drives the child itself, in the same
thread, then goes on. Cancelling the parent cancels its children (`Engine.cancel`, unless
`children=False`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from engine import events as ev
from engine.context import current_runner
from engine.definitions import Workflow
from engine.errors import EngineError, RunLeasedError
from engine.logcontext import get_logger
from engine.messages import POLL_S, RECHECK_S, wake
from engine.status import RunStatus, StepStatus
from engine.unwinding import Halt

if TYPE_CHECKING:
    from collections.abc import Mapping

    from engine.aggregate import WorkflowRun
    from engine.driver import RunDriver
    from engine.engine import Engine

log = get_logger("stepstone.engine")
# A child that ended without an error of its own: the event that ended it names why.
_ENDS = {RunStatus.CANCELLED: ev.RunCancelled.__name__,
         RunStatus.TIMED_OUT: ev.RunTimedOut.__name__}
R = TypeVar("R")
_PREFIX = "child:"


class ChildFailedError(EngineError):
    """A child run failed, was cancelled or timed out; the parent may catch it."""

    def __init__(self, child_run_id: UUID, status: str, error_type: str | None,
                 message: str | None) -> None:
        self.child_run_id = child_run_id
        self.status = status
        self.error_type = error_type
        self.error_message = message
        super().__init__(f"child run {child_run_id} {status}: {error_type}: {message}")


def child_key(parent_run_id: UUID, step_key: str) -> str:
    """The idempotency key a child run is started with (its id follows from it)."""
    return f"{_PREFIX}{parent_run_id}/{step_key}"


def parent_of(run: WorkflowRun) -> UUID | None:
    """The run that started `run` as its child, if any (read off its idempotency key)."""
    return parent_from_key(run.state.idempotency_key)


def parent_from_key(key: str | None) -> UUID | None:
    """The parent run named by a child's idempotency key (`child:PARENT/STEP`), if it is one."""
    if key is None or not key.startswith(_PREFIX):
        return None
    try:
        return UUID(key[len(_PREFIX):].partition("/")[0])
    except ValueError:
        return None


def child(workflow: Workflow[..., R], input: Mapping[str, Any] | None = None) -> R:
    """Run `workflow` as a child of this run and return its output (see the module docstring).

    Its failure (failed, cancelled, timed out) raises `ChildFailedError`, which the body may
    catch. Outside a workflow run, calls the workflow as plain Python.
    """
    runner: Any = current_runner.get()
    if runner is None or not hasattr(runner, "child"):
        return workflow(**dict(input or {}))
    result: R = runner.child(workflow, input)
    return result


def child_in(driver: RunDriver, workflow: Workflow[..., Any],
             input: Mapping[str, Any] | None) -> Any:
    key, recorded = driver.next_position("child")
    run = driver.run
    if recorded is not None and recorded.status is StepStatus.COMPLETED:
        return workflow.codec.decode(recorded.output)
    if recorded is not None and recorded.status is StepStatus.FAILED:
        err = recorded.error
        raise ChildFailedError(run.state.children[key], str(recorded.output),
                               err.error_type if err else None, err.message if err else None)
    engine: Engine | None = driver.child_engine
    if engine is None:
        raise RuntimeError("this drive of the run cannot start child runs")
    if recorded is None:
        stop = driver.stop_pending(key)
        if stop is not None:
            raise stop
        child_id = engine.start(workflow, input, key=child_key(run.id, key))
        driver.record(run.start_child, key, child_id, workflow.name)
        driver.save()  # the parent waits from here: durable before it does
    child_id = run.state.children[key]
    while True:
        stop = driver.stop_pending(key)
        if stop is not None:
            raise stop
        ended = engine.store.load(child_id)
        if ended.status.is_terminal:
            err = ended.state.error
            error_type = err.error_type if err else _ENDS.get(ended.status, "RunStopped")
            message = err.message if err else ended.state.last_reason
            driver.record(run.finish_child, key, ended.status.value, ended.state.output,
                          error_type, message)  # held, like a step's completion
            if ended.status is RunStatus.COMPLETED:
                return workflow.codec.decode(ended.state.output)
            raise ChildFailedError(child_id, ended.status.value, error_type, message)
        now = driver.clock()
        if driver.suspend_after_s is not None:
            # A worker: hand the parent back; the child's end wakes it.
            driver.wait_until(now + timedelta(seconds=max(RECHECK_S,
                                                          driver.suspend_after_s + 1.0)))
            continue
        try:
            engine.resume(child_id)  # a local drive runs its child here
        except RunLeasedError:  # a worker drives it: look again shortly
            driver.wait_until(now + timedelta(seconds=POLL_S))
        except EngineError as e:  # the child cannot go on (parked, damaged): not the parent's
            raise Halt(e) from e


def wake_parent_or_self(engine: Engine, run: WorkflowRun) -> None:
    """After a drive handed `run` back: a child that ended wakes its parent; a parent waiting
    for a child that ended meanwhile wakes itself. Best effort, like the hand-back: a parent
    not woken looks at its child again within `RECHECK_S`."""
    try:
        _wake(engine, run)
    except EngineError as e:
        log.warning("run %s: could not wake its parent or itself: %s", run.id, e)


def _wake(engine: Engine, run: WorkflowRun) -> None:
    if run.status.is_terminal:
        parent = parent_of(run)
        if parent is not None:
            wake(engine.leases, parent)
        return
    waiting = [k for k, s in run.state.steps.items()
               if s.name == "child" and s.status is StepStatus.WAITING]
    if run.status is RunStatus.WAITING and waiting \
            and engine.store.load(run.state.children[waiting[-1]]).status.is_terminal:
        wake(engine.leases, run.id)


def cancel_children(engine: Engine, run: WorkflowRun, reason: str, by: str | None) -> list[UUID]:
    """Cancel the unfinished children of `run` (and theirs, through `Engine.cancel`)."""
    from engine.errors import CancelPendingError, RunFinishedError

    cancelled = []
    for child_id in run.state.children.values():
        try:
            engine.cancel(child_id, reason=f"parent {run.id} cancelled: {reason}", by=by)
            cancelled.append(child_id)
        except (RunFinishedError, CancelPendingError):
            continue
    return cancelled
