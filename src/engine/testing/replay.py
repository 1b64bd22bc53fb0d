"""`replay_history`: re-run a stored run's workflow body against the current code, offline.

The body is called with a runner that returns each step's recorded output and refuses to
execute anything, so no step code runs and nothing is written. It proves that today's code
still asks for the recorded steps in the recorded order and, beyond the deploy-safety check
(`engine.audit.replay_check.check_history`, which it complements), that a finished run still
produces the recorded output or failure from the recorded step outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from engine.aggregate import StepState, WorkflowRun
from engine.context import current_runner
from engine.definitions import Step, StepCall, Workflow
from engine.engine import Engine
from engine.errors import NonDeterminismError, StepFailedError
from engine.identity import load_workflow
from engine.status import RunStatus, StepStatus


class ReplayMismatchError(AssertionError):
    """The current code replays the history's steps but ends differently than the run did."""


class _HistoryEnds(BaseException):
    """The body asked for a step the history has no outcome for: a replay cannot go on."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


@dataclass(frozen=True)
class ReplayReport:
    run_id: UUID
    status: RunStatus
    steps_replayed: int
    stopped_at: str | None
    """For an unfinished run, the first step the history has no outcome for."""


class _ReplayRunner:
    """Answers step calls from the run's history only; never runs step code."""

    def __init__(self, run: WorkflowRun) -> None:
        self.run = run
        self.history = list(run.steps)
        self.position = 0
        self._ordinals: Counter[str] = Counter()

    def _next(self, name: str) -> tuple[str, StepState]:
        key = f"{name}#{self._ordinals[name]}"
        self._ordinals[name] += 1
        if self.position >= len(self.history):
            if self.run.status.is_terminal:
                raise NonDeterminismError(self.run.id, self.position, "<end of history>", key)
            raise _HistoryEnds(key)
        expected = self.history[self.position]
        if expected != key:
            raise NonDeterminismError(self.run.id, self.position, expected, key)
        self.position += 1
        return key, self.run.steps[key]

    def call_step(self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key, state = self._next(step.name)
        if state.status is StepStatus.COMPLETED:
            return step.codec.decode(state.output)
        if state.status is StepStatus.FAILED and not state.retryable and state.error:
            raise StepFailedError(key, state.error.error_type, state.error.message)
        raise _HistoryEnds(key)

    def sleep(self, seconds: float) -> None:
        key, state = self._next("sleep")
        if state.status is not StepStatus.COMPLETED:
            raise _HistoryEnds(key)

    def gather(self, calls: Sequence[StepCall[Any]], limit: int) -> list[Any]:
        return [self.call_step(c.step, c.args, c.kwargs) for c in calls]

    def patched(self, change_id: str) -> bool:
        # As the driver decides: a recorded marker says new; a history that goes on past this
        # point was written by the old code; at its end the run would take the new path.
        if change_id in self.run.state.patches:
            return True
        return self.position >= len(self.history)


def replay_history(
    engine: Engine, run_id: UUID, workflow: Workflow[..., Any] | None = None
) -> ReplayReport:
    """Replay run `run_id` from `engine`'s store against `workflow` (default: the code at the
    run's recorded entry point).

    Raises `NonDeterminismError` if the code asks for other steps than the history recorded,
    `ReplayMismatchError` if a finished run's output or failure comes out differently.
    """
    run = engine.store.load(run_id)
    definition = workflow or load_workflow(run.state.entrypoint)
    runner = _ReplayRunner(run)
    status = run.status
    reset = current_runner.set(runner)
    try:
        output = definition.fn(**definition.bind_input(run.state.input))
    except _HistoryEnds as end:
        return ReplayReport(run_id, status, runner.position - 1, end.key)
    except StepFailedError as e:
        _expect_failure(run, e.error_type)
        return ReplayReport(run_id, status, runner.position, None)
    except NonDeterminismError:
        raise
    except Exception as e:
        _expect_failure(run, type(e).__name__)
        return ReplayReport(run_id, status, runner.position, None)
    finally:
        current_runner.reset(reset)
    if runner.position < len(runner.history):
        raise NonDeterminismError(
            run_id, runner.position, runner.history[runner.position], "<end of workflow>"
        )
    if status is RunStatus.COMPLETED:
        encoded = definition.codec.encode(output)
        if encoded != run.state.output:
            raise ReplayMismatchError(
                f"run {run_id}: the current code returns {encoded!r} from the recorded step "
                f"outputs, but the run recorded {run.state.output!r}"
            )
    elif status is RunStatus.FAILED:
        raise ReplayMismatchError(f"run {run_id} failed, but the current code completes it")
    return ReplayReport(run_id, status, runner.position, None)


def _expect_failure(run: WorkflowRun, error_type: str) -> None:
    recorded = run.state.error.error_type if run.state.error else None
    if run.status is not RunStatus.FAILED or recorded != error_type:
        raise ReplayMismatchError(
            f"run {run.id} is {run.status.value}"
            + (f" ({recorded})" if recorded else "")
            + f", but the current code fails it with {error_type}"
        )
